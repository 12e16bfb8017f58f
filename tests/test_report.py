"""timm_icm.report: method names from args.yaml and the tables printed from summary.csv files."""
import pytest
import yaml

from timm_icm import report


@pytest.mark.parametrize('args, name', [
    (dict(mixup=0.0), 'ERM'),
    (dict(mixup=0.2), 'Mixup'),
    (dict(mixup=0.2, icm=True), 'IC-Mixup'),
    (dict(mixup=0.2, icm=True, icm_axes='pair'), 'IC-Mixup (pair axis)'),
    (dict(mixup=20, regmixup=True, icm=True), 'IC-RegMixup'),
    (dict(mixup=0.2, remix=True), 'Remix'),
    (dict(cutmix=1.0, icm=True, icm_duplicates='merge'), 'IC-CutMix (merge)'),
    (dict(mixup=0.2, icm=True, icm_unmixed='ce'), 'IC-Mixup (unmixed ce)'),
    (dict(mixup=0.0, logit_adjust=1.0), 'LA'),
    (dict(mixup=0.2, logit_adjust=1.0), 'Mixup + LA'),
    (dict(mixup=0.2, icm=True, logit_adjust=1.0), 'IC-Mixup + LA'),
    (dict(mixup=0.0, cutmix=0.0, cutmix_minmax=[0.3, 0.8]), 'CutMix'),
])
def test_method_name(args, name):
    assert report.method_name(args) == name


def make_run(folder, args, top1s):
    folder.mkdir()
    (folder / 'args.yaml').write_text(yaml.safe_dump(args))
    lines = ['epoch,train_loss,eval_loss,eval_top1,eval_top5,eval_ece,lr']
    lines += [f'{e},1.0,1.0,{t},90.0,5.0,0.1' for e, t in enumerate(top1s)]
    (folder / 'summary.csv').write_text('\n'.join(lines) + '\n')
    return str(folder)


def test_tables(tmp_path, capsys):
    runs = [make_run(tmp_path / 'a', dict(mixup=0.2), [10, 60]), make_run(tmp_path / 'b', dict(mixup=0.2), [10, 70]),
            make_run(tmp_path / 'c', dict(mixup=0.2, icm=True), [10, 80])]
    assert report.main(runs) == 0
    out = capsys.readouterr().out
    assert '| a | Mixup | 2 | 60.00 |' in out and '| c | IC-Mixup | 2 | 80.00 |' in out
    assert report.main(['--mean', *runs]) == 0
    out = capsys.readouterr().out
    assert '| Mixup | 2 | 65.00 ± 7.07 |' in out and '| IC-Mixup | 1 | 80.00 |' in out


def test_unfinished_run(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert 'no finished epoch' in capsys.readouterr().err
