from tokenforge.cli import main

main()
