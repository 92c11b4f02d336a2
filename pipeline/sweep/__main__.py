from pipeline.sweep.command import main

main()
