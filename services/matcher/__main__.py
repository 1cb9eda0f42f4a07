from services.matcher.main import main

main()
