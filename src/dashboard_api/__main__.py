from dashboard_api.cli import main

main()
