"""reft_trl.core against the authors' reference values, closed forms and a slow loop implementation."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reft_trl.core import (
    LOSS_AGG_MODES,
    OUTCOME_ESTIMATORS,
    AdaptiveKLController,
    discounted_returns,
    discounted_suffix_sum,
    gae,
    kl_penalty,
    masked_whiten,
    outcome_advantages,
    policy_loss,
    ppo_statistics,
    token_rewards,
    value_loss,
)

ATOL = 1e-5


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def right_padded_mask(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


def gae_loop(rewards, values, mask, gamma, lam):
    """The reference's recursion, one token at a time (slow, obviously right)."""
    B, T = rewards.shape
    values = values * mask
    advantages = torch.zeros_like(rewards)
    for b in range(B):
        last = 0.0
        for i in reversed(range(T)):
            next_value = values[b, i + 1] if i + 1 < T else 0.0
            delta = rewards[b, i] + gamma * next_value - values[b, i]
            last = delta + gamma * lam * last
            advantages[b, i] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


# ----------------------------------------------------------------------------------------------- goldens
@pytest.fixture(scope="module")
def ppo_records(goldens):
    return json.loads((goldens / "ppo_math_dev.json").read_text())


def _rollout(record):
    c, i = record["config"], record["inputs"]
    mask = t(i["mask"])
    ref = t(i["ref_logprobs"]) if i["ref_logprobs"] is not None else None
    rewards = token_rewards(t(i["scores"]), t(i["logprobs"]), ref, mask, c["kl_coef"])
    advantages, returns = gae(rewards, t(i["values"]), mask, c["gamma"], c["lam"])
    return mask, rewards, advantages, returns


def test_goldens_cover_the_configurations(ppo_records):
    configs = [r["config"] for r in ppo_records]
    assert {c["adv_whitening"] for c in configs} == {"global", "local", "none"}
    assert any(not c["use_ref_model"] for c in configs)
    assert any(c["ppo_epochs"] > 1 for c in configs)


def test_token_rewards_gae_and_whitening_match_reference(ppo_records):
    for record in ppo_records:
        out = record["outputs"]
        mask, rewards, advantages, returns = _rollout(record)
        # Compared everywhere, padding included: padding must come out as 0 like the reference's.
        torch.testing.assert_close(
            rewards, t(out["rewards"]), atol=ATOL, rtol=0, msg=f"rewards, record {record['id']}"
        )
        torch.testing.assert_close(advantages, t(out["advantages"]), atol=ATOL, rtol=0)
        torch.testing.assert_close(returns, t(out["returns"]), atol=ATOL, rtol=0)
        if out["whitened_advantages"] is not None:
            whitened = masked_whiten(advantages, mask)
            torch.testing.assert_close(whitened * mask, t(out["whitened_advantages"]) * mask, atol=ATOL, rtol=0)


def test_minibatch_losses_match_reference(ppo_records):
    checked = 0
    for record in ppo_records:
        c, i = record["config"], record["inputs"]
        mask, _, advantages, returns = _rollout(record)
        if c["adv_whitening"] == "global":
            advantages = masked_whiten(advantages, mask)
        for mb in record["outputs"]["minibatches"]:
            rows = mb["rows"]
            adv = advantages[rows]
            if c["adv_whitening"] == "local":
                adv = masked_whiten(adv, mask[rows])
            pg = policy_loss(t(i["new_logprobs"])[rows], t(i["logprobs"])[rows], adv, mask[rows], c["cliprange"])
            vf = value_loss(
                t(i["new_values"])[rows], t(i["values"])[rows], returns[rows], mask[rows], c["cliprange_value"]
            )
            assert pg.item() == pytest.approx(mb["pg_loss"], abs=ATOL)
            assert vf.item() == pytest.approx(mb["vf_loss"], abs=ATOL)
            assert (pg + c["vf_coef"] * vf).item() == pytest.approx(mb["loss"], abs=ATOL)
            checked += 1
    assert checked == sum(len(r["outputs"]["minibatches"]) for r in ppo_records) > 8


# ------------------------------------------------------------------------------------------- token rewards
def test_score_lands_on_last_completion_token_and_kl_on_every_token():
    mask = right_padded_mask([3, 1, 4], 4)
    logprobs = torch.full((3, 4), -1.0)
    ref = torch.full((3, 4), -1.5)
    rewards = token_rewards(t([1.0, 0.1, 0.0]), logprobs, ref, mask, kl_coef=0.2)
    kl_reward = -0.2 * 0.5
    expected = torch.tensor(
        [
            [kl_reward, kl_reward, kl_reward + 1.0, 0.0],
            [kl_reward + 0.1, 0.0, 0.0, 0.0],
            [kl_reward, kl_reward, kl_reward, kl_reward],
        ]
    )
    torch.testing.assert_close(rewards, expected)


def test_no_reference_model_means_no_kl_and_empty_rows_get_nothing():
    mask = right_padded_mask([2, 0], 3)
    rewards = token_rewards(t([0.5, 1.0]), torch.randn(2, 3), None, mask, kl_coef=0.3)
    torch.testing.assert_close(rewards, t([[0, 0.5, 0], [0, 0, 0]]))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_are_zero_for_identical_policies(estimator):
    logprobs = torch.randn(4, 7)
    assert torch.all(kl_penalty(logprobs, logprobs.clone(), estimator) == 0)


def test_k3_is_nonnegative_and_k1_can_be_negative():
    logprobs, ref = torch.randn(64, 32), torch.randn(64, 32)
    assert torch.all(kl_penalty(logprobs, ref, "k3") >= 0)
    assert torch.any(kl_penalty(logprobs, ref, "k1") < 0)


def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    # Sample from p, estimate KL(p || q) with each estimator; compare with the exact value.
    p = torch.distributions.Categorical(logits=torch.tensor([2.0, 0.5, -1.0, 0.0]))
    q = torch.distributions.Categorical(logits=torch.tensor([1.0, 1.0, 0.0, -0.5]))
    exact = torch.distributions.kl_divergence(p, q).item()
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(p.probs, 200_000, replacement=True, generator=gen)
    for estimator in ("k1", "k3"):
        estimate = kl_penalty(p.log_prob(x), q.log_prob(x), estimator).mean().item()
        assert estimate == pytest.approx(exact, abs=0.01), estimator


def test_unknown_estimator_is_a_clear_error():
    with pytest.raises(ValueError, match="kl_estimator 'k9'"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k9")


# -------------------------------------------------------------------------------------------------- GAE
def test_gamma_lambda_one_gives_monte_carlo_returns():
    mask = right_padded_mask([5, 3], 6)
    rewards = torch.randn(2, 6) * mask
    values = torch.randn(2, 6)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1) * mask
    torch.testing.assert_close(returns, reward_to_go)
    torch.testing.assert_close(advantages, (reward_to_go - values) * mask)


def test_zero_lambda_gives_one_step_td():
    mask = right_padded_mask([4, 2], 5)
    rewards, values = torch.randn(2, 5) * mask, torch.randn(2, 5)
    gamma = 0.9
    advantages, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    v = values * mask
    next_v = torch.cat([v[:, 1:], torch.zeros(2, 1)], dim=1)
    torch.testing.assert_close(advantages, (rewards + gamma * next_v - v) * mask)


def test_values_at_masked_positions_do_not_change_the_result():
    mask = right_padded_mask([3, 6, 1], 6)
    rewards, values = torch.randn(3, 6) * mask, torch.randn(3, 6)
    garbage = values + (1 - mask) * 1e3 * torch.randn(3, 6)
    for a, b in zip(gae(rewards, values, mask, 1.0, 0.95), gae(rewards, garbage, mask, 1.0, 0.95), strict=True):
        torch.testing.assert_close(a, b)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    pad=st.integers(0, 5),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_vectorised_gae_equals_the_slow_loop(lengths, pad, gamma, lam, seed):
    T = max(lengths) + pad
    if T == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    mask = right_padded_mask(lengths, T)
    rewards = torch.randn(len(lengths), T, generator=gen, dtype=torch.float64) * mask
    values = torch.randn(len(lengths), T, generator=gen, dtype=torch.float64)
    fast = gae(rewards, values, mask.double(), gamma, lam)
    slow = gae_loop(rewards, values, mask.double(), gamma, lam)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_long_responses_stay_exact_in_float32():
    T = 2048
    mask = right_padded_mask([T, T // 2], T)
    gen = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(2, T, generator=gen) * mask, torch.randn(2, T, generator=gen)
    fast = gae(rewards, values, mask, 1.0, 0.95)
    slow = gae_loop(rewards.double(), values.double(), mask.double(), 1.0, 0.95)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-5)


def test_discounted_suffix_sum_with_zero_discount_is_identity():
    x = torch.randn(3, 9)
    torch.testing.assert_close(discounted_suffix_sum(x, 0.0), x)


# -------------------------------------------------------------------------------------------- whitening
def test_masked_whiten_uses_unbiased_variance_over_masked_entries_only():
    mask = right_padded_mask([3, 2], 4)
    x = t([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 9.0]])
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (values - values.mean()) / torch.sqrt(values.var(unbiased=True) + 1e-8)
    out = masked_whiten(x, mask)
    torch.testing.assert_close(out[mask.bool()], expected)
    assert torch.all(out[~mask.bool()] == 0)
    kept_mean = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept_mean[mask.bool()], expected + values.mean())


def test_masked_whiten_all_reduce_gives_global_statistics():
    # Two "processes" holding halves of a batch: whitening each half with summed statistics equals whitening the
    # whole batch at once.
    mask = right_padded_mask([3, 5, 2, 4], 5)
    x = torch.randn(4, 5)
    whole = masked_whiten(x, mask)
    parts = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    stats = [torch.stack([(p * m).sum(), (p.square() * m).sum(), m.sum()]) for p, m in parts]
    total = stats[0] + stats[1]
    halves = [masked_whiten(p, m, all_reduce=lambda s: total) for p, m in parts]
    torch.testing.assert_close(torch.cat(halves), whole)


def test_masked_whiten_rejects_fewer_than_two_entries():
    with pytest.raises(ValueError, match="at least 2 masked entries"):
        masked_whiten(torch.ones(1, 3), right_padded_mask([1], 3))


# ----------------------------------------------------------------------------------------------- losses
def test_policy_loss_is_minus_advantage_when_the_policy_did_not_move():
    mask = right_padded_mask([2, 4], 4)
    logprobs, advantages = torch.randn(2, 4), torch.randn(2, 4)
    loss = policy_loss(logprobs, logprobs, advantages, mask, cliprange=0.2)
    per_seq = (-advantages * mask).sum(-1) / mask.sum(-1)
    assert loss.item() == pytest.approx(per_seq.mean().item(), abs=1e-6)


def test_policy_loss_clips_the_ratio_for_positive_advantages():
    mask = torch.ones(1, 1)
    # ratio e^1 ~ 2.72 with a positive advantage is clipped at 1.2; with a negative one the unclipped term wins.
    assert policy_loss(t([[1.0]]), t([[0.0]]), t([[1.0]]), mask, 0.2).item() == pytest.approx(-1.2)
    assert policy_loss(t([[1.0]]), t([[0.0]]), t([[-1.0]]), mask, 0.2).item() == pytest.approx(torch.e, rel=1e-6)


def test_sequences_weigh_equally_whatever_their_length():
    mask = right_padded_mask([1, 4], 4)
    advantages = t([[1.0, 0, 0, 0], [2.0, 2.0, 2.0, 2.0]])
    zeros = torch.zeros(2, 4)
    assert policy_loss(zeros, zeros, advantages, mask, 0.2).item() == pytest.approx(-1.5)


def test_value_loss_takes_the_pessimistic_clipped_term():
    mask = torch.ones(1, 1)
    # V moved from 0 to 1 toward a return of 2: clipped V is 0.2, so the clipped error (1.8^2) dominates.
    assert value_loss(t([[1.0]]), t([[0.0]]), t([[2.0]]), mask, 0.2).item() == pytest.approx(0.5 * 1.8**2)
    # Within the clip range both terms agree.
    assert value_loss(t([[0.1]]), t([[0.0]]), t([[2.0]]), mask, 0.2).item() == pytest.approx(0.5 * 1.9**2)


def test_losses_ignore_padding():
    mask = right_padded_mask([2], 4)
    a = torch.randn(1, 4)
    b = a.clone()
    b[:, 2:] = 1e4
    zeros = torch.zeros(1, 4)
    assert policy_loss(zeros, zeros, a, mask, 0.2) == policy_loss(zeros, zeros, b, mask, 0.2)
    assert value_loss(a, zeros, zeros, mask, 0.2) == value_loss(b, zeros, zeros, mask, 0.2)


def test_ppo_statistics():
    mask = torch.ones(1, 4)
    logprobs, old = t([[0.0, 1.0, 0.0, 0.0]]), torch.zeros(1, 4)
    values, old_values, returns = t([[0.0, 0.5, 0.0, 0.0]]), torch.zeros(1, 4), t([[0.0, 0.5, 1.0, 2.0]])
    stats = ppo_statistics(logprobs, old, torch.ones(1, 4), values, old_values, returns, mask, 0.2, 0.2)
    assert stats["policy_clipfrac"].item() == pytest.approx(0.25)
    assert stats["value_clipfrac"].item() == pytest.approx(0.25)
    assert stats["approx_kl"].item() == pytest.approx(0.125)
    perfect = ppo_statistics(logprobs, old, torch.ones(1, 4), returns, old_values, returns, mask, 0.2, 0.2)
    assert perfect["explained_variance"].item() == pytest.approx(1.0)
    flat = ppo_statistics(logprobs, old, torch.ones(1, 4), values, old_values, torch.zeros(1, 4), mask, 0.2, 0.2)
    assert torch.isnan(flat["explained_variance"])  # undefined when the returns do not vary


def test_golden_copies_are_the_shared_reference_files(goldens):
    """tests/goldens holds unchanged copies of shared/goldens (checked when the shared folder is beside the repo)."""
    from conftest import GOLDEN_FILES, SHARED

    if not (SHARED / "goldens").is_dir():
        pytest.skip(f"{SHARED / 'goldens'} not found: nothing to compare the copies with")
    for name in GOLDEN_FILES:
        assert (goldens / name).read_bytes() == (SHARED / "goldens" / name).read_bytes(), name


# ------------------------------------------------------------------------------------ verl 0.9.1's own functions
@pytest.fixture(scope="module")
def verl(goldens):
    return json.loads((goldens / "verl_algos_dev.json").read_text())


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_policy_loss_reproduces_verl_clip_higher_dual_clip_and_every_aggregation(verl):
    modes = set()
    for record in verl["policy_loss"]:
        args = [_t(record[k]) for k in ("logprobs", "old_logprobs", "advantages", "mask")]
        loss = policy_loss(
            *args,
            record["cliprange_low"],
            cliprange_high=record["cliprange_high"],
            dual_clip=record["dual_clip"],
            loss_agg_mode=record["loss_agg_mode"],
            max_len=record["loss_scale_factor"],
        )
        assert loss.item() == pytest.approx(record["loss"], abs=1e-6), record["loss_agg_mode"]
        modes.add(record["loss_agg_mode"])
    assert modes == set(LOSS_AGG_MODES)


def test_value_loss_reproduces_verl(verl):
    for record in verl["value_loss"]:
        args = [_t(record[k]) for k in ("values", "old_values", "returns", "mask")]
        loss = value_loss(
            *args,
            record["cliprange_value"],
            loss_agg_mode=record["loss_agg_mode"],
            max_len=record["loss_scale_factor"],
        )
        assert loss.item() == pytest.approx(record["loss"], abs=1e-6), record["loss_agg_mode"]


def test_advantage_estimators_reproduce_verl(verl):
    seen = set()
    for record in verl["advantages"]:
        rewards, mask = _t(record["rewards"]), _t(record["mask"])
        estimator = record["estimator"]
        if estimator == "gae":  # verl whitens GAE's advantages over the batch; returns = raw GAE + values
            raw, returns = gae(rewards, _t(record["values"]), mask, record["gamma"], record["lam"])
            advantages = masked_whiten(raw, mask)
        elif estimator == "remax":  # returns-to-go minus the greedy sample's reward (a baseline we do not compute)
            returns = discounted_returns(rewards, mask, 1.0)
            advantages = returns - _t(record["reward_baselines"]).unsqueeze(-1) * mask
        else:
            advantages, returns = outcome_advantages(
                rewards,
                mask,
                estimator,
                group_ids=record["group_ids"],
                gamma=record["gamma"],
                norm_by_std=record.get("norm_by_std", True),
            )
        keep = mask.bool()
        torch.testing.assert_close(advantages[keep], _t(record["advantages"])[keep], atol=1e-6, rtol=0)
        if "returns" in record:
            torch.testing.assert_close(returns[keep], _t(record["returns"])[keep], atol=1e-6, rtol=0)
        seen.add(estimator)
    assert set(OUTCOME_ESTIMATORS) <= seen


def test_grpo_without_std_and_groups_of_one():
    rewards = _t([[0.0, 1.0], [0.0, 0.0], [0.0, 0.5]])
    mask = torch.ones_like(rewards)
    advantages, _ = outcome_advantages(rewards, mask, "grpo", group_ids=[0, 0, 1], norm_by_std=False)
    assert advantages[:, -1].tolist() == [0.5, -0.5, 0.5]  # verl: a group of one keeps its reward (mean 0, std 1)
    advantages, _ = outcome_advantages(rewards, mask, "rloo", group_ids=["a", "a", "b"])
    assert advantages[:, 0].tolist() == [1.0, -1.0, 0.5]  # leave-one-out: 1 - 0, 0 - 1; alone: its reward
    with pytest.raises(ValueError, match="group_ids"):
        outcome_advantages(rewards, mask, "grpo")
    with pytest.raises(ValueError, match="Unknown advantage estimator"):
        outcome_advantages(rewards, mask, "vtrace")


def test_adaptive_kl_controller_reproduces_verl(verl):
    for record in verl["adaptive_kl"]:
        ctl = AdaptiveKLController(record["init_kl_coef"], record["target"], record["horizon"])
        for kl, expected in zip(record["observed_kl"], record["kl_coef_after_each"], strict=True):
            assert ctl.update(kl, record["n_steps"]) == pytest.approx(expected, abs=1e-12)
        restored = AdaptiveKLController(1.0, 1.0, 1)
        restored.load_state_dict(ctl.state_dict())
        assert restored.update(3.0, 10) == ctl.update(3.0, 10)


def test_kl_estimators_reproduce_verl(verl):
    for record in verl["kl_penalty"]:
        kl = kl_penalty(_t(record["logprobs"]), _t(record["ref_logprobs"]), record["estimator"])
        torch.testing.assert_close(kl, _t(record["kl"]), atol=1e-6, rtol=0, msg=record["verl_name"])


# ------------------------------------------------------------------------ multi-turn: tool-result tokens
def gae_loop_skipping(rewards, values, mask, gamma, lam):
    """verl's multi-turn recursion (``compute_gae_advantage_return`` with an observation-masked ``response_mask``),
    one token at a time: a masked token passes the next value and the running advantage through unchanged."""
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    for b in range(B):
        next_value, last = 0.0, 0.0
        for i in reversed(range(T)):
            if mask[b, i]:
                delta = rewards[b, i] + gamma * next_value - values[b, i]
                last = delta + gamma * lam * last
                next_value = values[b, i]
                advantages[b, i] = last
    return advantages, (advantages + values) * mask


def test_tool_tokens_are_skipped_not_an_episode_end():
    """The issue's case: three model tokens, three tool-result tokens, two model tokens; V = 0.5, reward 1 at the
    end. The model tokens get exactly the advantages of the same five tokens without the tool result in between
    (+0.41, +0.43, +0.45, ...), not a bootstrap to 0 at the tool call (which gave -0.10, -0.11, -0.11)."""
    gamma, lam = 1.0, 0.95
    mask = t([[1, 1, 1, 0, 0, 0, 1, 1]])
    values = torch.full((1, 8), 0.5)
    rewards = torch.zeros(1, 8)
    rewards[0, -1] = 1.0
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    contiguous, contiguous_returns = gae(t([[0, 0, 0, 0, 1.0]]), torch.full((1, 5), 0.5), torch.ones(1, 5), gamma, lam)
    keep = mask.bool()
    torch.testing.assert_close(advantages[keep], contiguous[0])
    torch.testing.assert_close(returns[keep], contiguous_returns[0])
    assert torch.all(advantages[~keep] == 0) and torch.all(returns[~keep] == 0)
    # closed form: delta = 0 on every model token but the last (0.5 - 0.5), delta_last = 1 - 0.5; A_k = (gl)^(n-k) / 2
    closed = [0.5 * (gamma * lam) ** (4 - k) for k in range(5)]
    torch.testing.assert_close(advantages[keep], t(closed))
    assert advantages[0, :3].tolist() == pytest.approx([0.4073, 0.4287, 0.4513], abs=1e-4)


def test_gamma_and_lambda_apply_once_across_a_tool_call():
    """gamma < 1: a tool call is one environment step whatever its length (1 or 50 tool tokens give the same)."""
    gamma, lam = 0.9, 0.8
    values = t([[0.2, 0.7, 0.0, 0.3, 0.1]])
    rewards = t([[0.0, -0.1, 0.0, 0.0, 1.0]])
    short = gae(rewards, values, t([[1, 1, 0, 1, 1]]), gamma, lam)[0]
    long_rewards = torch.cat([rewards[:, :2], torch.zeros(1, 50), rewards[:, 3:]], dim=1)
    long_values = torch.cat([values[:, :2], torch.randn(1, 50), values[:, 3:]], dim=1)
    long_mask = torch.cat([torch.ones(1, 2), torch.zeros(1, 50), torch.ones(1, 2)], dim=1)
    long = gae(long_rewards, long_values, long_mask, gamma, lam)[0]
    torch.testing.assert_close(long[long_mask.bool()], short[t([[1, 1, 0, 1, 1]]).bool()])
    # closed form over the model tokens (V = 0.2, 0.7, 0.3, 0.1; r = 0, -0.1, 0, 1)
    v, r = [0.2, 0.7, 0.3, 0.1, 0.0], [0.0, -0.1, 0.0, 1.0]
    deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(4)]
    expected = [sum((gamma * lam) ** (j - k) * deltas[j] for j in range(k, 4)) for k in range(4)]
    torch.testing.assert_close(short[0, [0, 1, 3, 4]], t(expected))


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.booleans(), min_size=0, max_size=30), min_size=1, max_size=4),
    pad=st.integers(0, 4),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_gae_with_tool_segments_equals_verls_loop(rows, pad, gamma, lam, seed):
    T = max(len(r) for r in rows) + pad
    if T == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(rows), T, dtype=torch.float64)
    for b, r in enumerate(rows):
        mask[b, : len(r)] = torch.tensor(r, dtype=torch.float64)
    rewards = torch.randn(len(rows), T, generator=gen, dtype=torch.float64)
    values = torch.randn(len(rows), T, generator=gen, dtype=torch.float64)
    fast = gae(rewards, values, mask, gamma, lam)
    slow = gae_loop_skipping(rewards, values, mask, gamma, lam)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_discounted_returns_skip_tool_tokens():
    mask = t([[1, 0, 0, 1, 1, 0]])
    rewards = t([[0.5, 9.0, 9.0, 0.0, 1.0, 9.0]])  # what sits on masked positions is ignored
    returns = discounted_returns(rewards, mask, 0.5)
    torch.testing.assert_close(returns, t([[0.5 + 0.25, 0, 0, 0.5, 1.0, 0]]))


def test_token_rewards_put_the_score_on_the_last_model_token_and_no_kl_on_tool_tokens():
    mask = t([[1, 1, 0, 0, 1, 0, 0]])  # model, model, tool, tool, model (the last), tool result, padding
    logprobs, ref = torch.randn(1, 7), torch.randn(1, 7)
    rewards = token_rewards(t([2.0]), logprobs, ref, mask, kl_coef=0.1)
    kl = -0.1 * (logprobs - ref)
    torch.testing.assert_close(rewards[0, [0, 1]], kl[0, [0, 1]])
    assert rewards[0, 4].item() == pytest.approx(kl[0, 4].item() + 2.0)
    assert torch.all(rewards[0, [2, 3, 5, 6]] == 0)


@pytest.mark.parametrize("estimator", OUTCOME_ESTIMATORS)
def test_outcome_estimators_give_tool_tokens_nothing_and_ignore_their_number(estimator):
    """The critic-free estimators see the same advantages on the model tokens whether or not tool tokens sit
    between them, and give tool tokens 0."""
    interleaved = t([[1, 1, 0, 0, 1, 1], [1, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0]])
    rewards = torch.zeros(4, 6)
    for b, score in enumerate([1.0, 0.0, 0.5, 1.0]):
        rewards[b, core_last(interleaved[b])] = score
    rewards[:, 0] += 0.05 * interleaved[:, 0]
    adv, _ = outcome_advantages(rewards, interleaved, estimator, group_ids=[0, 0, 1, 1], gamma=0.9)
    packed = torch.zeros(4, 6)
    packed_rewards = torch.zeros(4, 6)
    for b in range(4):
        n = int(interleaved[b].sum())
        packed[b, :n] = 1
        packed_rewards[b, :n] = rewards[b][interleaved[b].bool()]
    adv_packed, _ = outcome_advantages(packed_rewards, packed, estimator, group_ids=[0, 0, 1, 1], gamma=0.9)
    for b in range(4):
        torch.testing.assert_close(adv[b][interleaved[b].bool()], adv_packed[b][packed[b].bool()])
    assert torch.all(adv[interleaved == 0] == 0)


def core_last(row):
    return int(row.nonzero().max())


def test_masked_tokens_get_no_gradient_in_the_policy_and_value_losses():
    """Tool-result tokens: the gradient of policy_loss + value_loss (every aggregation) w.r.t. their log-probs and
    values is exactly 0, and the model tokens' is not."""
    torch.manual_seed(0)
    mask = t([[1, 1, 0, 0, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1, 1, 1]])
    old_logps, old_values = torch.randn(2, 8), torch.randn(2, 8)
    rewards = token_rewards(t([1.0, 0.0]), old_logps, old_logps - 0.1, mask, kl_coef=0.05)
    advantages, returns = gae(rewards, old_values, mask, 1.0, 0.95)
    advantages = masked_whiten(advantages, mask)
    for mode in LOSS_AGG_MODES:
        logps = (old_logps + 0.01 * torch.randn(2, 8)).requires_grad_()  # inside the clip range
        values = (old_values + 0.01 * torch.randn(2, 8)).requires_grad_()
        loss = policy_loss(logps, old_logps, advantages, mask, 0.2, loss_agg_mode=mode) + value_loss(
            values, old_values, returns, mask, 0.2, loss_agg_mode=mode
        )
        loss.backward()
        assert torch.all(logps.grad[mask == 0] == 0) and torch.all(values.grad[mask == 0] == 0), mode
        assert torch.all(logps.grad[mask == 1] != 0) and torch.all(values.grad[mask == 1] != 0), mode
