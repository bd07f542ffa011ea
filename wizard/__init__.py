"""The guided setup (`ftune new`). Never imports torch."""
