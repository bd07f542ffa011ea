from ftune.cli import main

main(prog_name="ftune")
