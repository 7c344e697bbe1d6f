"""input@<name>: fingerprint one external file or folder that a variant reads (`inputs.<name>` in params.yaml).

The external path is this stage's DVC dependency; its output, `data/inputs/<name>.json` (the content hash),
is a dependency of the stage that reads the path. See `thaw.inputs`. No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from thaw import artifacts, inputs, stage

log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    args, _ = stage.parse(argv, __doc__, "path", "out")
    record = inputs.fingerprint(args.path)
    log.info("%s: %s, %d file(s), %d bytes, md5 %s", args.path, record["kind"], record["files"], record["bytes"],
             record["md5"])  # fmt: skip
    artifacts.write_json(args.out, record)


if __name__ == "__main__":
    stage.run(main)
