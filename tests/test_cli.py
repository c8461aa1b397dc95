import subprocess
import sys

import numpy as np
import pytest

from ddim.app.cli import main


def test_sample_writes_npy_and_png(tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", "--model", "mixture:mog3", "--n", "200", "--steps", "20", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (200, 2) and np.isfinite(x).all()
    assert (tmp_path / "s.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "NFE 20" in text and str(out) in text
    # same seed → same bits
    out2 = tmp_path / "t.npy"
    main(["sample", "--n", "200", "--steps", "20", "--out", str(out2)])
    assert np.array_equal(np.load(out2), x)


@pytest.mark.parametrize("args", [["--steps", "0"], ["--steps", "5000"], ["--eta", "-1"], ["--eta", "nan"],
                                  ["--model", "nope"], ["--out", "x.txt"]])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args):
    assert main(["sample", "--n", "4", "--out", str(tmp_path / "a.npy"), *args] if "--out" not in args
                else ["sample", "--n", "4", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1 and "Traceback" not in "\n".join(err)


def test_help_documents_every_option():
    r = subprocess.run([sys.executable, "-m", "ddim", "sample", "--help"], capture_output=True, text=True, check=True)
    for opt in ("--model", "--n", "--steps", "--sampler", "--eta", "--spacing", "--seed", "--out"):
        assert opt in r.stdout
