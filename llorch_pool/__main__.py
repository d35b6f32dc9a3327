from llorch_pool.cli import main

raise SystemExit(main())
