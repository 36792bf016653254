"""Calibrated matching with abstention, the persistent index and ISM re-ranking."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from idml_jax import calibrate
from idml_jax.evaluation import confidence
from idml_jax.evaluation.knn import jax_search
from idml_jax.index import DecisionsOff, GalleryIndex, IndexFileError, Thresholds, decide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _naive_curve(scores, correct):
  """Every distinct threshold, descending, by direct counting."""
  rows = []
  for t in sorted(set(scores.tolist()), reverse=True):
    kept = scores >= t
    hits = np.sum(correct & kept)
    p = hits / kept.sum()
    r = hits / max(correct.sum(), 1)
    rows.append((t, p, r, 2 * p * r / (p + r) if p + r else 0.0, kept.mean()))
  return np.array(rows)


def test_threshold_curve_equals_direct_counting_with_ties():
  rng = np.random.default_rng(0)
  scores = np.round(rng.random(300), 1)  # 11 distinct values: many ties.
  correct = rng.random(300) < scores
  curve = calibrate.threshold_curve(scores, correct)
  want = _naive_curve(scores, correct)
  got = np.stack([curve[k] for k in ("threshold", "precision", "recall", "f1", "coverage")], 1)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_calibration_finds_a_known_threshold():
  rng = np.random.default_rng(1)
  s = rng.random(2000)
  correct = s >= 0.6  # The answer: the smallest score >= 0.6.
  for target in (1.0, None):  # Precision 1 and maximal F1 (=1) both land there.
    th, _ = calibrate.calibrate(s, correct, target_precision=target)
    assert th.similarity == s[s >= 0.6].min()
    assert th.heldout["similarity_precision"] == 1.0 and th.heldout["similarity_recall"] == 1.0
  # P(correct | s) = s, s ~ U(0, 1): precision of {s >= t} is (1 + t) / 2, so t = 2p - 1.
  s = rng.random(200_000)
  correct = rng.random(len(s)) < s
  th, _ = calibrate.calibrate(s, correct, target_precision=0.9)
  assert abs(th.similarity - 0.8) < 0.01
  assert th.heldout["similarity_precision"] >= 0.9


def test_uncertainty_threshold_and_unreachable_targets():
  rng = np.random.default_rng(2)
  u = rng.random(500)
  correct = u <= 0.3  # Right exactly when certain.
  s = rng.random(500)  # Similarity carries no information here.
  th, curves = calibrate.calibrate(s, correct, u)  # Maximal F1 (= 1) on both sides.
  assert th.uncertainty == u[u <= 0.3].max()
  assert th.heldout["uncertainty_coverage"] == pytest.approx(np.mean(u <= 0.3))
  assert th.heldout["uncertainty_precision"] == 1.0
  assert set(curves) == {"similarity", "uncertainty"}
  s_good = np.where(correct, 0.5 + 0.5 * s, 0.5 * s)  # Similarity reaches precision 1 ...
  u_bad = np.where(correct, 0.5 + 0.5 * u, 0.5 * u)  # ... the most certain are all wrong:
  th, _ = calibrate.calibrate(s_good, correct, u_bad, target_precision=1.0)
  assert th.similarity == s_good[correct].min()
  assert th.uncertainty is None and "Abstention is off" in th.heldout["uncertainty_note"]
  with pytest.raises(ValueError, match=r"No similarity threshold reaches precision 0\.99 .*"
                     r"best .*lower the target precision"):
    calibrate.calibrate(s, rng.random(500) < 0.2, target_precision=0.99)
  th, curves = calibrate.calibrate(s, correct, np.full(500, 0.5))  # Constant: no rule.
  assert th.uncertainty is None and set(curves) == {"similarity"}


def test_decide_gives_each_decision_its_reason():
  th = Thresholds(similarity=0.5, uncertainty=0.8)
  decision, reason = decide(np.array([0.7, 0.3, 0.9, 0.5]),
                                      np.array([0.1, 0.1, 0.95, 0.8]), th)
  assert decision.tolist() == ["match", "no_match", "abstain", "match"]
  assert reason[0] == "similarity 0.7000 >= 0.5000"
  assert reason[1] == "similarity 0.3000 < 0.5000"
  assert reason[2] == "uncertainty 0.9500 > 0.8000"
  d, _ = decide(np.array([0.7]), None, th)  # Baseline queries: never abstain.
  assert d.tolist() == ["match"]


def test_abstention_fails_closed_on_a_non_finite_uncertainty():
  th = Thresholds(similarity=0.5, uncertainty=0.8)
  decision, reason = decide(np.array([0.9, 0.9, 0.9]), np.array([np.nan, np.inf, 0.1]), th)
  assert decision.tolist() == ["abstain", "abstain", "match"]
  assert reason.tolist()[:2] == ["uncertainty nan is not finite", "uncertainty inf is not finite"]
  rng = np.random.default_rng(3)  # Calibrating on a NaN uncertainty is refused, not skipped.
  u = rng.random(50)
  u[7] = np.nan
  with pytest.raises(ValueError, match="uncertainties contain NaN/inf in 1 of 50"):
    calibrate.calibrate(rng.random(50), rng.random(50) < 0.5, u)


@pytest.mark.parametrize("target", [-0.5, 0.0, 1.5, float("nan")])
def test_calibrate_refuses_a_target_outside_0_1(target):
  rng = np.random.default_rng(4)
  with pytest.raises(ValueError, match=r"target precision must lie in \(0, 1\]"):
    calibrate.calibrate(rng.random(50), rng.random(50) < 0.5, target_precision=target)


@pytest.mark.parametrize("correct, why", [
    (np.zeros(40, bool), "No query's nearest neighbor is right"),
    (np.ones(40, bool), "Every query's nearest neighbor is right")])
def test_calibrate_refuses_data_that_cannot_calibrate(correct, why):
  with pytest.raises(ValueError, match=why):
    calibrate.calibrate(np.random.default_rng(5).random(40), correct)


def _gallery(n=300, d=16, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.standard_normal((12, d))
  labels = rng.integers(0, 12, n)
  emb = (3 * centers[labels] + rng.standard_normal((n, d))).astype(np.float32)
  return emb, labels.astype(str), rng.random(n), np.array([f"img{i}.jpg" for i in range(n)])


def test_index_round_trip_keeps_neighbors_and_decisions(tmp_path):
  emb, labels, unc, names = _gallery()
  index = GalleryIndex(emb[:250], names[:250], labels[:250], unc[:250], max_k=20,
                       backend="exact_host", source={"checkpoint": "ckpt/7"})
  index.thresholds = Thresholds(similarity=0.95, uncertainty=0.7)
  before = index.query(emb[250:], 5, unc[250:])
  assert set(before.decision) == {"match", "no_match", "abstain"}
  index.save(str(tmp_path / "idx"))
  os.rename(tmp_path / "idx", tmp_path / "moved")  # ScaNN's asset paths move with it.
  for backend in (None, "exact_device"):
    loaded = GalleryIndex.load(str(tmp_path / "moved"), backend=backend)
    after = loaded.query(emb[250:], 5, unc[250:])
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-5)
    np.testing.assert_array_equal(after.decision, before.decision)
    np.testing.assert_array_equal(after.reason, before.reason)
    assert loaded.source == {"checkpoint": "ckpt/7"} and len(loaded) == 250
  # add: the added items are found, with their metadata.
  loaded.add(emb[250:], names[250:], labels[250:], unc[250:])
  m = loaded.query(emb[250:], 1, unc[250:])
  np.testing.assert_array_equal(m.indices[:, 0], np.arange(250, 300))
  assert m.names[:, 0].tolist() == names[250:].tolist()
  with pytest.raises(ValueError, match="has labels: pass labels for the added items too"):
    loaded.add(emb[:2], names[:2])


def test_damaged_or_missing_indexes_are_refused(tmp_path):
  emb, labels, unc, names = _gallery(60)
  GalleryIndex(emb, names, labels, unc, max_k=10, backend="exact_host").save(str(tmp_path / "i"))
  with pytest.raises(IndexFileError, match="holds no index"):
    GalleryIndex.load(str(tmp_path / "nothing"))
  path = tmp_path / "i" / "arrays.npz"
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(IndexFileError, match="missing or damaged .*rebuild the index"):
    GalleryIndex.load(str(tmp_path / "i"))
  (tmp_path / "i" / "index.json").write_text("{\"format\": 1, ")  # A truncated write.
  with pytest.raises(IndexFileError, match="is damaged"):
    GalleryIndex.load(str(tmp_path / "i"))


def test_search_backends_and_tiles_agree_with_brute_force():
  emb, *_ = _gallery(500, 24, seed=3)
  queries = emb[:37] + 0.1
  g = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  want = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :7]
  for block, gallery_block in ((1024, None), (8, 64), (16, 123)):  # 123 does not divide 500.
    s, i = jax_search(q, g, 7, block_size=block, gallery_block=gallery_block)
    np.testing.assert_array_equal(i, want)
    np.testing.assert_allclose(s, np.take_along_axis(q @ g.T, want, 1), atol=1e-5)
  results = [GalleryIndex(emb, max_k=10, backend=b).search(queries, 7)
             for b in ("exact_host", "exact_device")]
  np.testing.assert_array_equal(results[0][1], results[1][1])
  np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)


def _naive_ism(q, uq, g, ug, a=4.0, b=5.0):
  s = q @ g / np.linalg.norm(q) / np.linalg.norm(g)
  d_mu = np.sum((q - g) ** 2)
  return 1 - (1 - s) * np.exp(-(uq**2 + ug**2 + a) / (b * (d_mu + 1e-6)))


@pytest.mark.parametrize("semantic_distance", ["raw", "normalized"])
def test_rerank_scores_each_pair_with_the_ism(semantic_distance):
  emb, labels, unc, names = _gallery(80, 8, seed=4)
  index = GalleryIndex(emb, names, labels, 3 * unc, max_k=10, backend="exact_device",
                       ism={"semantic_distance": semantic_distance})
  queries, q_unc = emb[:5] * 1.5, np.linspace(0.1, 4.0, 5)
  m = index.query(queries, 6, q_unc, rerank=True)
  for qi in range(5):
    qv = queries[qi] / np.linalg.norm(queries[qi]) if semantic_distance == "normalized" \
        else queries[qi]
    for j, gi in enumerate(m.indices[qi]):
      gv = emb[gi] / np.linalg.norm(emb[gi]) if semantic_distance == "normalized" else emb[gi]
      assert m.scores[qi, j] == pytest.approx(_naive_ism(qv, q_unc[qi], gv, 3 * unc[gi]),
                                              abs=2e-6)
    assert np.all(np.diff(m.scores[qi]) <= 0)  # Re-ordered, best first.
  # Constant uncertainty with unit-norm dmu: the ISM is increasing in the cosine, so the
  # re-ranked order is the cosine order.
  flat = GalleryIndex(emb, names, labels, np.ones(80), max_k=10, backend="exact_device",
                      ism={"semantic_distance": "normalized"})
  np.testing.assert_array_equal(flat.query(queries, 6, np.ones(5), rerank=True).indices,
                                flat.query(queries, 6).indices)
  with pytest.raises(ValueError, match="needs the queries' uncertainty_norm"):
    index.query(queries, 3, rerank=True)


def _cli(module, *args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=ROOT,
                        capture_output=True, text=True)


def test_save_calibrate_and_search_commands_abstain_and_say_why(tmp_path):
  emb, labels, unc, names = _gallery(200, 16, seed=5)
  rng = np.random.default_rng(5)
  hard = rng.random(200) < 0.3  # Noisy images, with a high uncertainty.
  emb[hard] += 10 * rng.standard_normal((hard.sum(), 16)).astype(np.float32)
  unc = np.where(hard, 0.8 + 0.2 * unc, 0.3 * unc).astype(np.float32)
  np.savez(tmp_path / "g.npz", semantic=emb[:150], names=names[:150], labels=labels[:150],
           uncertainty_norm=unc[:150])
  np.savez(tmp_path / "q.npz", semantic=emb[150:], names=names[150:], labels=labels[150:],
           uncertainty_norm=unc[150:])
  index = str(tmp_path / "index")
  out = _cli("idml_jax.search", f"--gallery={tmp_path / 'g.npz'}", f"--save_index={index}")
  assert out.returncode == 0 and "Saved an index of 150 items" in out.stdout, out.stderr
  out = _cli("idml_jax.calibrate", f"--index={index}", "--target_precision=0.95",
             "--rule=similarity")
  assert out.returncode == 0, out.stderr
  assert "uncertainty threshold" in out.stdout and os.path.exists(f"{index}/calibration.png")
  meta = json.load(open(f"{index}/index.json"))
  t_u = meta["thresholds"]["uncertainty"]
  loo = GalleryIndex(emb[:150], names[:150], labels[:150], unc[:150], backend="exact_device").query(
      emb[:150], 1, unc[:150], exclude_self=True)  # The CLI's default: leave-one-out.
  want, _ = calibrate.calibrate(loo.scores[:, 0], loo.labels[:, 0] == labels[:150],
                                unc[:150], target_precision=0.95)
  assert t_u == pytest.approx(want.uncertainty) and 0.3 <= t_u < 1.0
  assert meta["thresholds"]["similarity"] == pytest.approx(want.similarity)
  out = _cli("idml_jax.search", f"--index={index}", f"--queries={tmp_path / 'q.npz'}", "--k=3",
             f"--out={tmp_path / 'r.json'}")
  assert out.returncode == 0, out.stderr
  records = json.load(open(tmp_path / "r.json"))
  abstained = [r for r in records if r["decision"] == "abstain"]
  assert {r["query"] for r in abstained} == set(names[150:][unc[150:] > t_u])
  assert all(r["reason"].startswith("uncertainty ") for r in abstained)
  assert "decisions: match" in out.stdout and "abstain" in out.stdout
  before = open(f"{index}/index.json").read()
  out = _cli("idml_jax.calibrate", f"--index={index}", "--target_precision=1.01")
  assert out.returncode != 0 and "must lie in (0, 1]" in out.stderr
  assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
  assert open(f"{index}/index.json").read() == before  # Nothing stored.


@pytest.mark.parametrize("what", ["names", "labels", "uncertainty_norm"])
def test_add_validates_every_array_before_changing_anything(what):
  emb, labels, unc, names = _gallery()
  index = GalleryIndex(emb[:200], names[:200], labels[:200], unc[:200], max_k=10,
                       backend="exact_device")
  new = {"names": names[200:210], "labels": labels[200:210], "uncertainty_norm": unc[200:210]}
  new[what] = new[what][:7]  # 7 entries for 10 embeddings.
  with pytest.raises(ValueError, match=f"{what} has 7 entries for 10 added embeddings"):
    index.add(emb[200:210], **new)
  assert len(index) == 200 and len(index.embeddings) == 200 and len(index.labels) == 200
  bad = {"names": names[200:210], "labels": labels[200:210],
         "uncertainty_norm": np.where(np.arange(10) == 3, np.nan, unc[200:210])}
  with pytest.raises(ValueError, match="uncertainties contain NaN/inf in 1 of 10"):
    index.add(emb[200:210], **bad)
  assert len(index) == 200


def _flip_middle(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "truncated", "from_another_index"])
def test_damaged_scann_files_are_rebuilt_from_the_arrays(tmp_path, damage, caplog):
  emb, labels, unc, names = _gallery(200, seed=5)
  queries = emb[:30] + 0.05
  GalleryIndex(emb, names, labels, unc, max_k=10, backend="exact_host").save(str(tmp_path / "i"))
  want = GalleryIndex(emb, max_k=10, backend="exact_device").search(queries, 5)
  dataset = tmp_path / "i" / "scann" / "dataset.npy"
  if damage == "flipped":
    _flip_middle(dataset)
  elif damage == "truncated":
    dataset.write_bytes(dataset.read_bytes()[:1000])
  else:  # Another gallery's ScaNN folder, same size, copied over this one's.
    other = np.random.default_rng(9).standard_normal(emb.shape).astype(np.float32)
    GalleryIndex(other, max_k=10, backend="exact_host").save(str(tmp_path / "other"))
    shutil.rmtree(tmp_path / "i" / "scann")
    shutil.copytree(tmp_path / "other" / "scann", tmp_path / "i" / "scann")
  with caplog.at_level("WARNING"):
    loaded = GalleryIndex.load(str(tmp_path / "i"))
  assert "rebuilt from arrays.npz" in caplog.text
  scores, indices = loaded.search(queries, 5)
  np.testing.assert_array_equal(indices, want[1])
  np.testing.assert_allclose(scores, want[0], atol=1e-5)


def test_an_interrupted_save_is_recovered_from_dir_old(tmp_path, caplog):
  emb, labels, unc, names = _gallery(80)
  GalleryIndex(emb, names, labels, unc, max_k=10, backend="exact_host").save(str(tmp_path / "i"))
  os.rename(tmp_path / "i", tmp_path / "i.old")  # Killed between the two renames of save().
  (tmp_path / "i.saving").mkdir()
  with caplog.at_level("WARNING"):
    loaded = GalleryIndex.load(str(tmp_path / "i"))
  assert len(loaded) == 80 and "restored the previous index from" in caplog.text
  assert (tmp_path / "i" / "index.json").exists() and not (tmp_path / "i.old").exists()


def _hard_gallery(n=400, seed=6):
  """Half of the errors come from noisy images with a high ||u||, half from images whose ||u||
  says nothing: the similarity sees some of both, ||u|| only the first."""
  emb, labels, _, names = _gallery(n, 16, seed=seed)
  rng = np.random.default_rng(seed)
  hard = rng.random(n) < 0.3
  emb[hard] += 6 * rng.standard_normal((hard.sum(), 16)).astype(np.float32)
  unc = np.where(hard, 0.5 + 0.5 * rng.random(n), 0.6 * rng.random(n))
  return emb, labels, unc, names


def test_combined_rule_reaches_the_target_on_cross_fitted_queries_and_answers_more():
  emb, labels, unc, names = _hard_gallery()
  m = GalleryIndex(emb, names, labels, unc, backend="exact_device").query(emb, 2, unc,
                                                                         exclude_self=True)
  top1, second, correct = m.scores[:, 0], m.scores[:, 1], m.labels[:, 0] == labels
  th, curves = calibrate.calibrate_combined(top1, correct, labels, second, unc,
                                            target_precision=0.9)
  model = confidence.ConfidenceModel.from_dict(th.confidence)
  assert th.rule == "combined" and model.scores == ("nearest", "gap", "uncertainty")
  assert model.weights[2] > 0  # A lower ||u||: more likely right.
  # The stored held-out precision is that of the cross-fitted ordering at the stored coverage,
  # recounted; t_c is the fitted model's probability that answers as many of these queries.
  scores = {"nearest": top1, "gap": top1 - second, "uncertainty": -unc}
  order = np.argsort(-confidence.cross_fitted(scores, correct, labels), kind="stable")
  answered = int(round(th.heldout["combined_coverage"] * len(correct)))
  assert th.heldout["combined_precision"] == pytest.approx(correct[order[:answered]].mean())
  assert th.heldout["combined_precision"] >= 0.9
  assert np.sum(model.probability(scores) >= th.combined) == answered
  # The similarity rule alone, at the same target, answers fewer queries.
  sim, _ = calibrate.calibrate(top1, correct, target_precision=0.9)
  assert th.heldout["combined_coverage"] > sim.heldout["similarity_coverage"]
  # decide: the fitted model's probability against t_c, with the reason.
  decision, reason = decide(top1, unc, th, second)
  want = model.probability(scores) >= th.combined
  np.testing.assert_array_equal(decision == "match", want)
  assert set(decision) == {"match", "abstain"}
  assert reason[0].endswith("(combined: nearest, gap, uncertainty)")
  with pytest.raises(DecisionsOff, match="lack their uncertainty"):
    decide(top1, None, th, second)


def test_combined_rule_refuses_what_it_cannot_fit():
  emb, labels, unc, names = _hard_gallery()
  correct = np.random.default_rng(0).random(len(labels)) < 0.5
  with pytest.raises(ValueError, match="cannot be fitted: .*1 class.*--rule=similarity"):
    calibrate.calibrate_combined(np.random.default_rng(1).random(len(labels)), correct,
                                 np.zeros(len(labels)))


def test_combined_calibrate_then_search_from_a_saved_index(tmp_path):
  emb, labels, unc, names = _hard_gallery(300, seed=7)
  np.savez(tmp_path / "g.npz", semantic=emb[:200], names=names[:200], labels=labels[:200],
           uncertainty_norm=unc[:200])
  np.savez(tmp_path / "q.npz", semantic=emb[200:], names=names[200:], labels=labels[200:],
           uncertainty_norm=unc[200:])
  np.savez(tmp_path / "q_no_u.npz", semantic=emb[200:], names=names[200:])
  np.savez(tmp_path / "one_class.npz", semantic=emb[200:210], names=names[200:210],
           labels=np.full(10, labels[200]))
  index = str(tmp_path / "index")
  assert _cli("idml_jax.search", f"--gallery={tmp_path / 'g.npz'}",
              f"--save_index={index}").returncode == 0
  out = _cli("idml_jax.calibrate", f"--index={index}", f"--queries={tmp_path / 'q.npz'}",
             "--target_precision=0.9")
  assert out.returncode == 0 and out.stdout.startswith("combined confidence threshold"), \
      out.stderr
  th = GalleryIndex.load(index).thresholds
  assert th.rule == "combined" and th.heldout["combined_precision"] >= 0.9
  out = _cli("idml_jax.search", f"--index={index}", f"--queries={tmp_path / 'q.npz'}", "--k=3",
             f"--out={tmp_path / 'r.json'}")
  assert out.returncode == 0, out.stderr
  records = json.load(open(tmp_path / "r.json"))
  loaded = GalleryIndex.load(index)
  m = loaded.query(emb[200:], 3, unc[200:])
  assert [r["decision"] for r in records] == m.decision.tolist()
  assert {r["decision"] for r in records} == {"match", "abstain"}
  assert all("(combined: nearest, gap, uncertainty)" in r["reason"] for r in records)
  # Queries without an uncertainty: the neighbors, and the decisions line says why not.
  out = _cli("idml_jax.search", f"--index={index}", f"--queries={tmp_path / 'q_no_u.npz'}",
             "--k=3")
  assert out.returncode == 0 and "decisions: decisions are off: the index's combined " \
      "confidence reads nearest, gap, uncertainty; the queries lack their uncertainty" in \
      out.stdout, out.stdout
  # A held-out set of one class cannot fit the model: refused in one line, nothing stored.
  before = open(f"{index}/index.json").read()
  out = _cli("idml_jax.calibrate", f"--index={index}",
             f"--queries={tmp_path / 'one_class.npz'}")
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert out.stderr.startswith("calibrate: ")
  assert open(f"{index}/index.json").read() == before


def test_an_index_saved_under_an_old_back_end_name_loads_and_old_names_are_refused(tmp_path):
  emb, labels, unc, names = _gallery(60)
  GalleryIndex(emb, names, labels, unc, max_k=10, backend="exact_host").save(str(tmp_path / "i"))
  meta = json.load(open(tmp_path / "i" / "index.json"))
  meta["backend"] = "scann"  # As an earlier version wrote it.
  json.dump(meta, open(tmp_path / "i" / "index.json", "w"))
  loaded = GalleryIndex.load(str(tmp_path / "i"))
  assert loaded.backend == "exact_host" and loaded._searcher is not None
  with pytest.raises(ValueError, match="'jax' was renamed: use 'exact_device'"):
    GalleryIndex(emb, backend="jax")
  out = _cli("idml_jax.search", f"--index={tmp_path / 'i'}", "--backend=scann_ah", "--k=2")
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
  assert "'scann_ah' was renamed: use 'approximate'" in out.stderr


@pytest.mark.parametrize("target", ["workdir", "file", "saving", "old"])
def test_save_index_never_replaces_what_is_not_an_index(tmp_path, target):
  """``--save_index`` writes only into a path that is absent, empty or an index: a workdir
  (or a file, or an unrelated folder where its temporary copies go) is refused in one line,
  and nothing is renamed or deleted."""
  emb, labels, unc, names = _gallery(40)
  np.savez(tmp_path / "g.npz", semantic=emb, names=names, labels=labels)
  index = tmp_path / "index"
  if target == "workdir":
    (index / "checkpoints").mkdir(parents=True)
    (index / "run.json").write_text("{}")
  elif target == "file":
    index.write_text("my notes")
  else:  # Where the save writes beside the index: an unrelated folder with that name.
    (tmp_path / f"index.{target}").mkdir()
    (tmp_path / f"index.{target}" / "photo.jpg").write_text("x")
  snapshot = lambda: sorted((str(p), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*"))
  before = snapshot()
  out = _cli("idml_jax.search", f"--gallery={tmp_path / 'g.npz'}", f"--save_index={index}")
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert "is not" in out.stderr and "nothing was written, renamed or deleted" in out.stderr
  assert snapshot() == before
  # An empty folder and an index are fine (the second save replaces the first).
  for _ in range(2):
    empty = tmp_path / "fresh"
    empty.mkdir(exist_ok=True)
    GalleryIndex(emb, names, labels, max_k=5, backend="exact_host").save(str(empty))
  assert len(GalleryIndex.load(str(tmp_path / "fresh"))) == 40


def test_query_uncertainties_are_checked_and_missing_ones_turn_abstention_off_visibly(tmp_path):
  emb, labels, unc, names = _gallery(120)
  index = GalleryIndex(emb[:100], names[:100], labels[:100], unc[:100], backend="exact_device")
  index.thresholds = Thresholds(similarity=0.5, uncertainty=0.6)
  for bad, why in ((-1.0, "are norms .* negative"), (np.nan, "NaN/inf")):
    u = unc[100:].copy()
    u[3] = bad
    with pytest.raises(ValueError, match=why):
      index.query(emb[100:], 3, u)
  m = index.query(emb[100:], 3)  # No uncertainty: decided on the similarity, and said so.
  assert set(m.decision) <= {"match", "no_match"}
  assert m.note.startswith("abstention is off: the index abstains when ||u|| > 0.6000")
  index.save(str(tmp_path / "i"))
  np.savez(tmp_path / "q.npz", semantic=emb[100:], names=names[100:])
  out = _cli("idml_jax.search", f"--index={tmp_path / 'i'}", f"--queries={tmp_path / 'q.npz'}",
             "--k=2")
  assert out.returncode == 0 and "(abstention is off: the index abstains when ||u|| >" in out.stdout
  np.savez(tmp_path / "neg.npz", semantic=emb[100:], names=names[100:],
           uncertainty_norm=-np.ones(20))
  out = _cli("idml_jax.search", f"--index={tmp_path / 'i'}", f"--queries={tmp_path / 'neg.npz'}",
             "--k=2")
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
  assert "are norms (>= 0); 20 of 20 are negative" in out.stderr


@pytest.mark.parametrize("out_arg", ["folder", "missing_folder"])
def test_search_out_is_checked_before_any_work(tmp_path, out_arg):
  emb, labels, unc, names = _gallery(30)
  np.savez(tmp_path / "g.npz", semantic=emb, names=names)
  target = tmp_path if out_arg == "folder" else tmp_path / "nowhere" / "nn.json"
  out = _cli("idml_jax.search", f"--gallery={tmp_path / 'g.npz'}", "--k=2", f"--out={target}")
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
  assert ("is a folder: name a file" if out_arg == "folder" else "does not exist") in out.stderr


def test_calibrate_on_an_index_it_cannot_write_ends_in_one_line(tmp_path):
  emb, labels, unc, names = _hard_gallery(200)
  GalleryIndex(emb, names, labels, unc, backend="exact_host").save(str(tmp_path / "i"))
  script = ("import errno, os, sys\n"
            "real = os.makedirs\n"
            "def read_only(path, *a, **kw):\n"
            "  raise OSError(errno.EROFS, 'Read-only file system', str(path))\n"
            "os.makedirs = read_only\n"
            "from absl import app, flags\n"
            "from idml_jax import calibrate\n"
            "flags.DEFINE_string('index', None, '')\n"
            "flags.DEFINE_string('queries', None, '')\n"
            "flags.DEFINE_float('target_precision', None, '')\n"
            "flags.DEFINE_string('rule', 'combined', '')\n"
            "calibrate._INDEX, calibrate._QUERIES = flags.FLAGS['index'], flags.FLAGS['queries']\n"
            "calibrate._TARGET, calibrate._RULE = flags.FLAGS['target_precision'], "
            "flags.FLAGS['rule']\n"
            "app.run(calibrate.main)\n")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", script, f"--index={tmp_path / 'i'}"], env=env,
                       cwd=ROOT, capture_output=True, text=True)
  assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
  assert out.stderr.strip().splitlines() == [out.stderr.strip()]
  assert out.stderr.startswith("calibrate: [Errno 30] Read-only file system")
