"""A short soak (scripts/soak runs the long one): churn past every cap for
half a minute against Envoy with the filter; the caps hold and are counted,
the control cluster's threshold stays exact at every sample taken while its
nodes really pushed (a sample right after the machine paused the client past
half the TTL is not judged, and counted), every churned node expires, and Envoy's RSS does not grow after warm-up beyond a generous margin
(a correctness bound, not a performance figure)."""

import soak

RSS_MARGIN_KB = 32 * 1024


def test_churn_past_the_caps_keeps_them_and_the_control_threshold():
    report = soak.run(25, rate=120)
    assert report.problems == []
    assert report.pushes["200"] > 0 and report.pushes["200 partial"] > 0 and report.pushes["429"] > 0
    assert all(s.tracked_nodes <= soak.CONFIG["max_expected_nodes"] for s in report.samples)
    assert report.tracked_after_expiry == len(soak.CONTROL_SCORES)
    assert report.rss_growth_kb < RSS_MARGIN_KB, report.summary()
