"""One name per lens: the lens table, and old results.json read through its alias map."""

import pytest

from onejump.errors import ConfigError
from onejump.experiment.lens_names import RUN_LENS_NAMES
from onejump.experiment.lens_table import EVALUATED, LENSES, OLD_NAMES, canonical_results, display, run_lens


def test_each_lens_has_one_row_with_kind_folder_display_and_colour():
    assert set(EVALUATED) <= set(LENSES)
    for lens_id, row in LENSES.items():
        assert row.id == lens_id and row.display and row.colour
        assert (row.folder is None) == (row.made_by is None)
    assert run_lens("full").folder == "lenses/nnjtc" and run_lens("full").kind == "per-level"
    assert set(RUN_LENS_NAMES) == {"full", "ojfa", "joint", "jtc", "tuned", "best"}
    assert display("ojfa") == "OJFA (one jump)" and display("jump 3") == "jump 3"
    with pytest.raises(ConfigError, match="no lens 'nnjtc'"):
        run_lens("nnjtc")
    assert not set(OLD_NAMES) & set(LENSES)  # an old name never names a current lens


def test_old_results_json_reads_with_the_table_ids():
    old = {"methods": {"identity": {}, "full_nnjtc": {"precision@1": [0.5]}, "ojfa": {}},
           "parameters": {"full_nnjtc": 30, "ojfa": 10}, "tests": {"ojfa_vs_full_nnjtc": {"p_value": 0.5}},
           "beyond": {"references": {"identity": {}}}}
    new = canonical_results(old)
    assert set(new["methods"]) == {"identity", "full", "ojfa"} and new["methods"]["full"]["precision@1"] == [0.5]
    assert new["parameters"] == {"full": 30, "ojfa": 10} and "ojfa_vs_full" in new["tests"]
    assert canonical_results(new) is new  # a current file is left as it is
