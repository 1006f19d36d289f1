"""VISA offline audit generation (see :mod:`occ_audit_ros.visa.generate` for options).

    python training/generate_audits.py --out output/visa_audits [--auditor simulated|clip|vlm]
    torchrun --nproc_per_node 2 training/generate_audits.py --out output/visa_audits
"""

import sys

from occ_audit_ros.visa.generate import main

if __name__ == "__main__":
    sys.exit(main())
