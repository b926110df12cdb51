from coavs.cli import main

raise SystemExit(main())
