from hs2trl.cli import main

main()
