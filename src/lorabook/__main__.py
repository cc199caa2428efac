from lorabook.cli import main

raise SystemExit(main())
