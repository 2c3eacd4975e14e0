"""`python -m mipflow.demo.run`: the demo federation end to end."""
from mipflow.demo.run import main

if __name__ == "__main__":
    raise SystemExit(main())
