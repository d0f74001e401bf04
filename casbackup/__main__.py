"""``python -m casbackup``."""

from casbackup.launch import main

main()
