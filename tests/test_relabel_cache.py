"""JudgmentCache: round trips, keys, first judgment wins (or the new one on request), persistence across connections
and processes."""

import subprocess
import sys

from hf_robust_ir.relabel.base import NO_VERDICT, Judgment, Verdict
from hf_robust_ir.relabel.cache import JudgmentCache, doc_key, list_key, query_key


def test_round_trip_and_len(tmp_path):
    qk, d1, d2 = query_key("q", [("p", "pos text")]), doc_key("d1", "one"), doc_key("d2", "two")
    with JudgmentCache(tmp_path / "sub" / "c.sqlite") as cache:
        assert len(cache) == 0
        assert cache.get_many("judge", [(qk, d1)]) == {}
        cache.put_many("judge", [(qk, d1, Judgment(Verdict.RELEVANT, 0.25, "why")), (qk, d2, NO_VERDICT)])
        assert len(cache) == 2 and cache.count("judge") == 2 and cache.count("other") == 0
        got = cache.get_many("judge", [(qk, d1), (qk, d2), (qk, doc_key("d3", "x"))])
    assert got == {(qk, d1): Judgment(Verdict.RELEVANT, 0.25, "why"), (qk, d2): NO_VERDICT}
    with JudgmentCache(tmp_path / "sub" / "c.sqlite") as again:  # persisted
        assert len(again) == 2
        assert again.get_many("other-judge", [(qk, d1)]) == {}


def test_keys_depend_on_text_ids_and_positives():
    assert query_key("q", [("p", "a")]) != query_key("q", [("p", "b")])
    assert query_key("q", [("p", "a")]) != query_key("q", [("p2", "a")])
    assert query_key("q", []) != query_key("q2", [])
    assert doc_key("d", "text") != doc_key("d", "text!") != doc_key("e", "text")
    assert query_key("q", [("p", "a")]) == query_key("q", [("p", "a")])


def test_first_judgment_wins(tmp_path):
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("j", [("q", "d", Judgment(Verdict.RELEVANT, 1.0))])
        cache.put_many("j", [("q", "d", Judgment(Verdict.NOT_RELEVANT, 0.0))])
        assert cache.get_many("j", [("q", "d")])[("q", "d")].verdict is Verdict.RELEVANT
        assert len(cache) == 1


def test_writes_from_another_process_are_visible(tmp_path):
    path = tmp_path / "c.sqlite"
    with JudgmentCache(path) as cache:
        cache.put_many("j", [("q", "d0", NO_VERDICT)])
        script = (
            "import sys; from hf_robust_ir.relabel.cache import JudgmentCache; "
            "from hf_robust_ir.relabel.base import Judgment, Verdict\n"
            "with JudgmentCache(sys.argv[1]) as c:\n"
            "    c.put_many('j', [('q', f'd{i}', Judgment(Verdict.RELEVANT, float(i))) for i in range(1, 6)])\n"
        )
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        assert len(cache) == 6
        assert cache.get_many("j", [("q", "d3")])[("q", "d3")] == Judgment(Verdict.RELEVANT, 3.0)


def test_a_stored_no_verdict_gives_way_to_a_verdict(tmp_path):
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("j", [("q", "d", NO_VERDICT), ("q", "e", NO_VERDICT)])
        cache.put_many("j", [("q", "d", Judgment(Verdict.RELEVANT, 1.0)), ("q", "e", NO_VERDICT)])
        cache.put_many("j", [("q", "d", Judgment(Verdict.NOT_RELEVANT, 0.0))])  # the first verdict stays
        assert cache.get_many("j", [("q", "d"), ("q", "e")]) == {
            ("q", "d"): Judgment(Verdict.RELEVANT, 1.0),
            ("q", "e"): NO_VERDICT,
        }


def test_replace_takes_the_new_judgment(tmp_path):
    with JudgmentCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("j", [("q", "d", Judgment(Verdict.RELEVANT, 1.0))])
        cache.put_many("j", [("q", "d", Judgment(Verdict.NOT_RELEVANT, 0.0, "again"))], replace=True)
        assert cache.get_many("j", [("q", "d")]) == {("q", "d"): Judgment(Verdict.NOT_RELEVANT, 0.0, "again")}
        assert len(cache) == 1


def test_list_keys_depend_on_the_candidate_list_and_its_order():
    qk, a, b = query_key("q", [("p", "pos")]), doc_key("a", "one"), doc_key("b", "two")
    assert list_key(qk, [a, b]) == list_key(qk, [a, b])
    assert len({list_key(qk, [a, b]), list_key(qk, [b, a]), list_key(qk, [a]), qk}) == 4
    assert list_key(qk, [a]) != list_key(query_key("q", [("p", "other")]), [a])
