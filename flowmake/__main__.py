from flowmake.cli import main

raise SystemExit(main())
