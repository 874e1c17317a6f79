from simulators.demo.cli import main

raise SystemExit(main())
