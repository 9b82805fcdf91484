from ipa_studio.cli import main

raise SystemExit(main())
