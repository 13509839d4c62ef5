from barsignal.cli import main

raise SystemExit(main())
