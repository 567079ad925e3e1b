from cryptopipe.cli import main

raise SystemExit(main())
