"""The [gzoo] messages: stdout for progress, stderr for mistakes, only from the process of rank zero."""

from lightning.fabric.utilities.rank_zero import rank_zero_only

from gzoo.log import error, say, warn


def test_messages_go_to_stdout_or_stderr_with_the_prefix(capsys):
    say("data: 3 galaxies")
    warn("a file was left out")
    error("labels file x has no rows.")
    out, err = capsys.readouterr()
    assert out == "[gzoo] data: 3 galaxies\n"
    assert err == "[gzoo] warning: a file was left out\n[gzoo] error: labels file x has no rows.\n"


def test_only_rank_zero_prints(capsys, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as Lightning sets it in the other DDP processes
    say("twice?")
    error("twice?")
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    say("once")
    assert capsys.readouterr().out == "[gzoo] once\n"
