"""``python -m transcode.calibrate``: print this machine's transcode capacity in ladder units."""

import sys

from transcode.capacity import main

sys.exit(main())
