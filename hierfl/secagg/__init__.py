"""Secure aggregation per fog region: SecAgg+ (Bell et al., 2020, on Bonawitz et al., 2017).

:class:`EdgeSecAgg` and :class:`FogSecAgg` are state machines that exchange the plain messages
of :mod:`hierfl.secagg.messages`; the fog learns only the sum of its region's clipped,
fixed-point-encoded updates, even when up to ``n - t`` edges drop out. They run over MQTT in
signed envelopes (:mod:`hierfl.secagg.envelope`, :mod:`hierfl.secagg.driver`,
:mod:`hierfl.secagg.service`) when a fog's ``secagg.mode`` is ``secure``: see
docs/secure-aggregation.md.
"""

from hierfl.secagg.client import EdgeSecAgg
from hierfl.secagg.encoding import FixedPoint
from hierfl.secagg.params import SecAggParams
from hierfl.secagg.server import FogSecAgg, SecAggResult

__all__ = ["EdgeSecAgg", "FixedPoint", "FogSecAgg", "SecAggParams", "SecAggResult"]
