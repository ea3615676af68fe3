import sys

from mimicnorm_deploy.cli import main

sys.exit(main())
