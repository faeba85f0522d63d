"""The claims benchmark: its verdict logic on made-up curves (fast), and one run on the tiny model (slow)."""
import pytest

from bench import claims


def test_steps_to_target_uses_the_smoothed_curve():
    losses = [3.0, 2.0, 1.0, 0.5, 0.4, 0.3]
    assert claims.smoothed([1.0, 3.0], window=2) == [1.0, 2.0]
    assert claims.steps_to(losses, 1.0) == 6 and claims.steps_to(losses, 0.1) is None


def test_verdicts_come_from_the_numbers():
    def run(losses, eval_loss, accuracy, trainable=1000, ranks=None):
        return {"losses": losses, "eval_loss": eval_loss, "accuracy": accuracy, "trainable": trainable,
                "ranks": ranks or {}}
    slow, fast = [3.0] * 5 + [1.0] * 10, [3.0, 1.0] + [0.5] * 13
    runs = {"lora": run(slow, 1.0, 0.5), "pissa": run(fast, 0.9, 0.6), "dora": run(slow, 1.1, 0.4),
            "vera": run(slow, 1.2, 0.1, trainable=50), "qlora": run(slow, 1.0, 0.5), "lora+": {"error": "boom"},
            "adalora": run(slow, 1.0, 0.5, ranks={"layer 0": {"q_proj": 2}, "layer 1": {"q_proj": 9}})}
    rows = {row[0]: row for row in claims.verdicts(runs, target=1.5)}
    assert rows["PiSSA converges 2-3x faster than LoRA"][3].startswith("yes")
    assert rows["DoRA beats LoRA at the same rank"][3] == "no"
    assert rows["LoRA+ converges ~2x faster"][3] == "not measured"
    assert rows["VeRA ~10x fewer trainable parameters"][3].startswith("yes (20x fewer); quality lost")
    assert rows["QLoRA within 1-2 points of LoRA; LoftQ narrows the gap"][3] == "yes (+0 points); LoftQ not measured"

    def qlora_verdict(qlora, loftq):
        both = {**runs, "qlora": qlora, "qlora + loftq": loftq}
        return {row[0]: row for row in claims.verdicts(both, target=1.5)}[
            "QLoRA within 1-2 points of LoRA; LoftQ narrows the gap"][3]
    assert qlora_verdict(run(slow, 1.0, 0.5), run(slow, 0.9, 0.6)) == "yes (+0 points); LoftQ narrows it (-10 points)"
    assert qlora_verdict(run(slow, 1.0, 0.3), run(slow, 1.1, 0.2)) == \
        "no (+20 points); LoftQ does not narrow it (+30 points)"
    assert rows["AdaLoRA spends rank where it matters"][3].startswith("yes (ranks uneven)")
    assert rows["rsLoRA makes high rank pay off"][3] == "not measured"
    # a lower eval loss at the same accuracy is a partial win, not a "yes"
    runs["dora"] = run(slow, 0.9, 0.5)
    rows = {row[0]: row for row in claims.verdicts(runs, target=1.5)}
    assert rows["DoRA beats LoRA at the same rank"][3] == "partly"


def test_own_lr_arms_differ_from_their_shared_arms_only_by_the_rate():
    """The job an @own-lr arm trains (arm() trains exactly job_config's config) carries its method's OWN_LR."""
    assert set(claims.OWN_LR) == {"vera", "ia3", "loha", "lokr", "adalora"}
    for method, own in claims.OWN_LR.items():
        shared = claims.job_config("smollm2-135m-instruct", method, steps=30, batch=8, lr=3e-4).to_dict()
        mine = claims.job_config("smollm2-135m-instruct", f"{method} @own-lr", steps=30, batch=8, lr=3e-4).to_dict()
        assert shared["training"]["learning_rate"] == 3e-4 and mine["training"]["learning_rate"] == own, method
        assert own > 3e-4, method
        mine["training"]["learning_rate"] = 3e-4
        assert mine == shared, method
    # the arms without a rate of their own keep following --lr
    assert claims.job_config("smollm2-135m-instruct", "lora", 30, 8, lr=1e-4).training.learning_rate == 1e-4


def test_verdicts_report_each_rate_a_method_ran_at():
    def run(accuracy, lr, trainable=1000, ranks=None):
        return {"losses": [1.0] * 5, "eval_loss": 1.0, "accuracy": accuracy, "trainable": trainable, "lr": lr,
                "ranks": ranks or {}}
    ranks = {"layer 0": {"q_proj": 2}, "layer 1": {"q_proj": 9}}
    runs = {"lora": run(0.9, 3e-4), "vera": run(0.0, 3e-4, trainable=50), "vera @own-lr": run(0.85, 1e-2, 50),
            "adalora @own-lr": run(0.95, 1e-3, ranks=ranks)}
    rows = {row[0]: row for row in claims.verdicts(runs, target=1.5)}
    vera = rows["VeRA ~10x fewer trainable parameters"]
    assert "exact 0 % at 3e-4, 85 % at 1e-2 vs 90 %" in vera[2]
    assert vera[3] == "yes (20x fewer); quality lost at 3e-4, kept at 1e-2"
    # only the own-rate AdaLoRA ran: its ranks and accuracy decide the row
    ada = rows["AdaLoRA spends rank where it matters"]
    assert ada[2] == "per-layer totals 2-9; exact 95 % at 1e-3 vs 90 %"
    assert ada[3] == "yes (ranks uneven); accuracy kept at 1e-3"


@pytest.mark.slow   # three training subprocesses on the tiny model, each answering the 40 held-out dates
def test_claims_benchmark_on_the_tiny_model(tiny_model_dir):
    text = claims.main(steps=3, batch=2, model=str(tiny_model_dir), arms=("lora", "vera", "adalora"))
    table = [line for line in text.splitlines() if line.startswith("| lora ") or line.startswith("| vera ")
             or line.startswith("| adalora ")]
    assert len(table) == 3 and "failed" not in text, text
    lora = [cell.strip() for cell in table[0].strip("|").split("|")]
    # LoRA r=8 on every linear layer of the 2-layer tiny llama: r x (in + out) per module
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads)
    per_layer = 8 * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))     # q, o; k, v; gate, up; down
    assert lora[1] == "0.0003"                                      # the shared rate
    assert lora[2] == f"{cfg.num_hidden_layers * per_layer:,}" and lora[3] == "1"
    for claim in ("PiSSA converges", "VeRA ~10x", "AdaLoRA spends rank"):
        assert claim in text
    assert "AdaLoRA: no ranks recorded." in text        # 3 steps: AdaLoRA never reaches a re-allocation
