from llorch_http.cli import main

raise SystemExit(main())
