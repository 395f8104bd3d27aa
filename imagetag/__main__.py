from imagetag.cli import main; raise SystemExit(main())
