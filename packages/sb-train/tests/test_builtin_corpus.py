"""The python-docs corpus: two labelled domains, and a validation share that opens with both."""

from __future__ import annotations

from sb_data import ValidationRule
from sb_train.builtin_corpus import CODE, PROSE, interleave_validation, python_docs_documents

RULE = ValidationRule(fraction=0.3, seed=0)


def test_small_budget_still_holds_both_domains():
    docs = python_docs_documents(200_000)
    assert {d for _, d in docs} == {PROSE, CODE}
    assert sum(len(t.encode()) for t, d in docs if d == PROSE) >= 100_000  # half the budget each


def _docs(domains):
    return [(f"{d}-{i}-" + "x" * ((7 * i) % 23), d) for i, d in enumerate(domains)]


def test_validation_opens_with_the_shortest_of_each_domain_then_alternates():
    docs = _docs([PROSE, CODE] * 20)
    out = interleave_validation(docs, RULE)
    val = [i for i in range(len(docs)) if RULE.is_val(i)]
    train = [i for i in range(len(docs)) if i not in val]
    assert [out[i] for i in train] == [docs[i] for i in train]  # training documents keep their places
    assert sorted(out[i] for i in val) == sorted(docs[i] for i in val)  # the same documents, reordered
    first, second = out[val[0]], out[val[1]]
    assert (first[1], second[1]) == (PROSE, CODE)
    assert len(first[0]) == min(len(docs[i][0]) for i in val if docs[i][1] == PROSE)
    assert [out[i][1] for i in val[2:6]] == [PROSE, CODE, PROSE, CODE]


def test_a_domain_missing_from_validation_trades_places_with_a_validation_document():
    val = [i for i in range(40) if RULE.is_val(i)]
    domains = [CODE if i in val else PROSE for i in range(40)]  # the hash sent only code to validation
    docs = _docs(domains)
    out = interleave_validation(docs, RULE)
    assert {out[i][1] for i in val} == {PROSE, CODE}
    assert sorted(out) == sorted(docs)  # nothing lost or duplicated
