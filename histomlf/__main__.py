from histomlf.cli import main

main()
