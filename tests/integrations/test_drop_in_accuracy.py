"""The README's drop-in accuracy claims, measured on small shapes each run (bench/drop_in_accuracy.py):
verl's k1 KL is bit-equal in every dtype; elsewhere crs_fast's error against fp64 is within
rounding of the framework's in fp32 and never larger in bf16/fp16."""

import drop_in_accuracy as dia
import pytest
from frameworks import require

require("verl")
require("trl")


@pytest.fixture(scope="module")
def rows():
    saved = dia.B, dia.T, dia.N, dia.V
    dia.B, dia.T, dia.N, dia.V = 8, 64, 32, 512
    try:
        return dia.run()
    finally:
        dia.B, dia.T, dia.N, dia.V = saved


def test_every_function_measured(rows):
    assert not [r for r in rows if "error" in r]
    assert {r["framework"] for r in rows} == {"verl", "openrlhf", "trl"}


def test_bit_equal_where_the_readme_says(rows):
    equal = {(r["framework"], r["function"]) for r in rows if r["bit_equal"]}
    assert ("verl", "kl_penalty kl") in equal
    for r in rows:
        if r["function"] == "kl_penalty kl":
            assert r["bit_equal"], r


def test_errors_against_fp64(rows):
    for r in rows:
        if r["dtype"] == "fp32":  # rounding either way: a few ulps of the result
            assert r["err_crs_fast"] <= 2.0 * r["err_framework"] + 1e-6, r
        else:
            assert r["err_crs_fast"] <= r["err_framework"] * 1.0001 + 1e-9, r
