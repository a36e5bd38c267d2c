"""python -m launcher [overrides...]  (same as moe-launch)"""
from launcher.cli import main

raise SystemExit(main())
