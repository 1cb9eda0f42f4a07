from services.executor.main import main

main()
