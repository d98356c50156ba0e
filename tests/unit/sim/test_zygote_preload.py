"""The edge zygote's imports (hierfl/sim/zygote.py): torch without torch._dynamo, which only a
DP-SGD edge needs (torch.optim's first step imports it); an edge's training never imports it.

Each check runs in a fresh interpreter: this test process may have imported anything."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_PROBE = textwrap.dedent("""
    import json, sys
    from hierfl.sim import zygote
    zygote.preload_modules(zygote.PRELOAD)
    after_preload = "torch._dynamo" in sys.modules
    {body}
    print(json.dumps({{"after_preload": after_preload, "dynamo": "torch._dynamo" in sys.modules,
                       "optim": "torch.optim" in sys.modules}}))
""")


def _probe(body: str) -> dict[str, bool]:
    code = _PROBE.format(body=textwrap.indent(textwrap.dedent(body), "").strip() or "pass")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_edge_zygote_does_not_import_dynamo_and_training_never_does():
    seen = _probe("""
import torch
from hierfl.edge.trainer import SupervisedTask
from hierfl.sim.scenarios import digits_model
task = SupervisedTask(lambda: digits_model(False), torch.randn(40, 64),
                      torch.randint(0, 10, (40,)), momentum=0.9)
task.train(task.build_model(), 2)
""")
    assert seen["after_preload"] is False
    assert seen["dynamo"] is False  # 2 epochs of the edge's SGD imported nothing more


def test_a_dp_sgd_edge_request_preloads_dynamo_before_the_fork():
    plain = _probe("""
zygote._warm({"command": ["edge"], "env": {"HIERFL_PRIVACY__MODE": "off"}})
""")
    assert plain["dynamo"] is False
    record = _probe("""
zygote._warm({"command": ["edge"], "env": {"HIERFL_PRIVACY__MODE": "record"}})
""")
    assert record["after_preload"] is False and record["dynamo"] is True and record["optim"]
