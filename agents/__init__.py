"""The agents' face: `ftune mcp`, a Model Context Protocol server over one runs folder.

    schemas.py   the tools' typed answers (pydantic: the JSON Schema an agent sees)
    guard.py     what the server may touch: folders, remote code, read-only, the call log (mcp.log)
    tools.py     each tool as a plain function over the runtime, the same functions the CLI calls
    server.py    the MCP server (the official `mcp` SDK): tools, resources, stdio and streamable HTTP

Only server.py imports `mcp` (the optional extra `ftune[agents]`); nothing here imports torch at module level.
"""
