"""The weight-only tables (token effects, neighbours) equal the fp32 product's extremes, whether
they come from the plain fp32 product or from bfloat16 candidates certified and rescored in fp32."""

import numpy as np
import pytest
import torch

from backend.engine import weights
from backend.engine.weights import TopProducts, top_k

pytestmark = pytest.mark.integration


def _same_extremes(got, prod, k, largest):
    """Same values as torch.topk's; the columns may differ only between entries of equal value."""
    v, i = got
    ref = torch.topk(prod, k, dim=1, largest=largest)
    torch.testing.assert_close(v, ref.values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prod.gather(1, i), ref.values, rtol=1e-5, atol=1e-6)
    assert (i.sort(1).values.diff(dim=1) > 0).all()  # k distinct columns


@pytest.mark.parametrize("n", [50, 1000, 4099])
def test_block_top_k_is_topk(n):
    torch.manual_seed(n)
    x = torch.randn(64, n)
    x[3, :] = 1.0  # a row of ties
    for largest in (True, False):
        _same_extremes(top_k(x, 7, largest), x, 7, largest)


@pytest.mark.parametrize("fast", [False, True])
def test_top_products_equal_the_fp32_product(fast):
    if fast and not weights.bf16_is_fast(torch.device("cpu"), 4096):
        pytest.skip("this CPU has no native bfloat16: the fp32 path is the one used")
    torch.manual_seed(0)
    W, M = torch.randn(300, 96) * 0.1, torch.randn(96, 6000)
    M[:, 100:140] = M[:, 99:100]  # 41 equal columns: where one is in a row's top 10, it cannot be certified
    W[:20] = M[:, 99] * 3  # so these rows' extremes are those columns
    tp = TopProducts(M, 10, fast=fast)
    (big, small) = tp.rows(W, (True, False))
    prod = W @ M
    _same_extremes(big, prod, 10, True)
    _same_extremes(small, prod, 10, False)
    if fast:
        assert 20 <= tp.n_uncertified < 60  # the tied rows fell back to fp32, most others did not
    skip = torch.arange(300)
    prod[torch.arange(300), skip] = float("-inf")
    ((v, i),) = TopProducts(M, 10, fast=fast).rows(W, (True,), skip=skip)
    _same_extremes((v, i), prod, 10, True)
    assert not (i == skip[:, None]).any()


def test_tables_of_a_real_sae_equal_brute_force(loaded_saes, adapter):
    s = loaded_saes[0]
    kind, matrix = adapter.token_effect_matrix()
    eff = weights.token_effects(s.name, s.sae, matrix, 5)
    prod = s.sae.W_dec.detach().float() @ matrix.float()
    for direction, largest in ((1, True), (-1, False)):
        rows = eff[eff.direction == direction]
        got = torch.tensor(rows.value.to_numpy()).view(-1, 5), torch.tensor(rows.token_id.to_numpy()).view(-1, 5)
        _same_extremes((got[0], got[1].long()), prod, 5, largest)
    nb = weights.neighbours(s.name, s.sae, 4)
    Wn = torch.nn.functional.normalize(s.sae.W_dec.detach().float(), dim=1)
    cos = (Wn @ Wn.T).fill_diagonal_(float("-inf"))
    got = torch.tensor(nb.cosine.to_numpy()).view(-1, 4), torch.tensor(nb.other.to_numpy()).view(-1, 4).long()
    _same_extremes(got, cos, 4, True)
    assert np.array_equal(nb.feature.to_numpy(), np.repeat(np.arange(len(Wn)), 4))


def test_top_products_give_up_bfloat16_where_it_certifies_little(monkeypatch):
    """Rows whose top columns lie closer than bfloat16 can tell are computed twice (bfloat16, then
    fp32); when most rows are like that, the rest go straight to fp32, with the same tables."""
    if not weights.bf16_is_fast(torch.device("cpu"), 4096):
        pytest.skip("this CPU has no native bfloat16: the fp32 path is the one used")
    monkeypatch.setattr(weights, "GIVE_UP_AFTER", 64)
    torch.manual_seed(1)
    M = torch.randn(96, 3000)
    M[:, 1:] = M[:, :1] + 1e-4 * torch.randn(96, 2999)  # every column nearly the same
    W = torch.randn(256, 96)
    tp = TopProducts(M, 10, fast=True)
    prod = W @ M
    got = [tp.rows(W[lo : lo + 64], (True,))[0] for lo in range(0, 256, 64)]
    assert not tp.fast and tp.n_uncertified == 64  # the first 64 rows failed, then fp32 alone
    _same_extremes((torch.cat([v for v, _ in got]), torch.cat([i for _, i in got])), prod, 10, True)
