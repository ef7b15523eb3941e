from dbfence.cli import main

main()
