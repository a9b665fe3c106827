"""Batch isolation on a real TorchServe: in a concurrent burst that the server batches, each bad
request fails alone with its own 4xx, and its batch-mates get exactly the verdict they get when
sent on their own."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import MODEL, SESSION_BATCH_SIZE
from test_hostile_inputs import astronaut, decompression_bomb, encode, no_face_image

pytestmark = pytest.mark.integration

ATTEMPTS = 3  # bursts tried until one provably mixes good and bad requests in a batch


def good_images() -> dict[str, bytes]:
    """Different images, sizes and outcomes (faces at several places, and no face)."""
    face = astronaut()
    return {
        "astronaut": encode(face, "JPEG", quality=92),
        "mirrored_small": encode(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((300, 300)), "PNG"),
        "cropped": encode(face.crop((100, 0, 400, 260)), "JPEG", quality=90),
        "no_face": encode(no_face_image(), "JPEG", quality=90),
    }


def bad_requests() -> dict[str, tuple[dict, str]]:
    """name -> (requests kwargs, expected error code)"""
    jpeg = encode(astronaut(), "JPEG")
    tiny = io.BytesIO()
    Image.new("RGB", (1, 1)).save(tiny, "PNG")
    return {
        "empty": ({"data": b""}, "empty_body"),
        "text": ({"data": b"not an image at all"}, "not_an_image"),
        "truncated": ({"data": jpeg[: len(jpeg) // 2]}, "corrupt_image"),
        "tiny": ({"data": tiny.getvalue()}, "image_too_small"),
        "bomb": ({"data": decompression_bomb()}, "image_too_large"),
        "bad_base64": ({"json": {"image": "%%%"}}, "bad_base64"),
    }


def essentials(answer: dict) -> dict:
    """The parts of a verdict that must not depend on batch-mates."""
    face = answer["face"]
    return {"label": answer["label"], "p": answer["fake_probability"], "box": face and face["box"],
            "faces": len(answer["faces"])}


def test_bad_inputs_fail_alone_and_batch_mates_match_single_answers(torchserve):
    goods, bads = good_images(), bad_requests()
    single = {}
    for name, body in goods.items():
        reply = torchserve.predict(MODEL, body)
        assert reply.status_code == 200, reply.text
        single[name] = essentials(reply.json())

    # Mostly bad requests: a good answer whose batch_size exceeds the number of good requests in
    # the whole burst shared its forward pass with bad ones.
    burst = [("good", name, {"data": body}) for name, body in goods.items()]
    burst += [("bad", name, kwargs) for name, (kwargs, _) in bads.items()] * 2
    order = np.random.default_rng(0).permutation(len(burst))
    burst = [burst[i] for i in order]

    mixed_batches = 0
    for _ in range(ATTEMPTS):
        with ThreadPoolExecutor(len(burst)) as pool:
            replies = list(pool.map(lambda item: torchserve.predict(MODEL, **item[2]), burst))
        for (kind, name, _), reply in zip(burst, replies):
            if kind == "bad":
                assert 400 <= reply.status_code < 500, (name, reply.status_code, reply.text[:200])
                assert reply.json()["error"] == bads[name][1], (name, reply.text[:200])
                continue
            assert reply.status_code == 200, (name, reply.text[:200])
            answer = reply.json()
            got, want = essentials(answer), single[name]
            assert got["label"] == want["label"] and got["faces"] == want["faces"], (name, got, want)
            assert abs(got["p"] - want["p"]) < 1e-4, (name, got, want)
            assert (got["box"] is None) == (want["box"] is None), (name, got, want)
            if want["box"] is not None:
                assert np.allclose(got["box"], want["box"], atol=1.0), (name, got, want)
            assert 1 <= answer["batch_size"] <= SESSION_BATCH_SIZE
            mixed_batches += answer["batch_size"] > len(goods)
        if mixed_batches:
            break
    assert mixed_batches, "no burst put a good request in a batch with bad ones; batching is off?"


def test_worker_survives_bursts_of_bad_requests(torchserve):
    before = {w["id"]: w["pid"] for w in torchserve.management("GET", f"/models/{MODEL}").json()[0]["workers"]}
    bads = list(bad_requests().values()) * 3
    with ThreadPoolExecutor(len(bads)) as pool:
        replies = list(pool.map(lambda item: torchserve.predict(MODEL, **item[0]), bads))
    assert all(400 <= r.status_code < 500 and json.loads(r.text)["error"] for r in replies)
    after = torchserve.management("GET", f"/models/{MODEL}").json()[0]["workers"]
    assert {w["id"]: w["pid"] for w in after} == before
    assert all(w["status"] == "READY" for w in after)


def test_fuzzed_burst_never_gets_a_5xx(torchserve):
    """Mutated real images, batched together: each is a verdict or its own 4xx, never a server error."""
    from test_fuzz_preprocessing import SEEDS, mutate

    rng = np.random.default_rng(6)
    kinds = ["flip", "set", "extreme", "truncate", "insert", "delete", "duplicate"]
    bodies = []
    for i in range(48):
        seed = SEEDS[sorted(SEEDS)[i % len(SEEDS)]]
        mutations = [(kinds[rng.integers(len(kinds))], float(rng.random()), int(rng.integers(2**32)))
                     for _ in range(int(rng.integers(1, 4)))]
        bodies.append(mutate(seed, mutations))
    before = {w["pid"] for w in torchserve.management("GET", f"/models/{MODEL}").json()[0]["workers"]}
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda body: torchserve.predict(MODEL, body), bodies))
    outcomes = {}
    for reply in replies:
        assert reply.status_code == 200 or 400 <= reply.status_code < 500, (reply.status_code, reply.text[:200])
        answer = reply.json()
        assert ("label" in answer) if reply.status_code == 200 else (answer["error"] and answer["message"])
        key = "verdict" if reply.status_code == 200 else answer["error"]
        outcomes[key] = outcomes.get(key, 0) + 1
    print(f"\nfuzzed burst outcomes: {outcomes}")
    after = torchserve.management("GET", f"/models/{MODEL}").json()[0]["workers"]
    assert {w["pid"] for w in after} == before and all(w["status"] == "READY" for w in after)
