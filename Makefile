# The README's two commands: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo's Fashion-MNIST: this folder if set, else found or fetched by timm_icm/demo_data.py (Debian's
# folder, a copy downloaded earlier into data/, Debian's package, torchvision's download into data/).
FMNIST_DIR ?=
DEBIAN_FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: test demo venv clean data cifar cifar-long cifar-ladder

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest -q

DEMO_SEEDS ?= 0 1 2
DEMO := -c hparams/cpu/fmnist_resnet20.yaml -c hparams/cpu/spc50.yaml --output output/demo

# Fashion-MNIST, 50 training images per class: Mixup vs IC-Mixup through train_icm.py, then the comparison.
demo: venv
	@fmnist=$$($(PY) -m timm_icm.demo_data --fmnist-dir "$(FMNIST_DIR)" --debian-dir "$(DEBIAN_FMNIST_DIR)" \
	  --download-dir data) || exit $$?; \
	mkdir -p output/demo; for seed in $(DEMO_SEEDS); do for method in mixup icmixup; do \
	  log=output/demo/$$method-$$seed.log; \
	  $(PY) train_icm.py $(DEMO) --data-dir "$$fmnist" -c hparams/methods/$$method.yaml \
	    --seed $$seed --subset-seed $$seed \
	    --experiment $$method-$$seed > $$log || { tail -n 20 $$log; exit 1; }; \
	  echo "$$method, seed $$seed: $$(grep 'Eval:' $$log | tail -n 1)"; \
	done; done
	$(PY) -m timm_icm.report --mean $(foreach s,$(DEMO_SEEDS),output/demo/mixup-$(s) output/demo/icmixup-$(s))

CIFAR_PACK ?= ../shared/data/cifar
# The real CIFAR-10/100 in their pickle layouts, unpacked into data/ (git-ignored) from the shared pack.
data: venv
	@test -f $(CIFAR_PACK)/unpack.py || { echo "no CIFAR pack at $(CIFAR_PACK): put cifar-10-batches-py/ and cifar-100-python/ in data/ yourself"; exit 2; }
	$(PY) $(CIFAR_PACK)/unpack.py data

# The paper's CIFAR blocks at CPU scale (hours: resumable, rows appended to benchmarks/results/cifar.csv).
CIFAR_BLOCKS ?= B1 B2 B3
cifar: data
	OMP_NUM_THREADS=1 $(PY) benchmarks/cifar.py --blocks $(CIFAR_BLOCKS) --extras --seeds 3 --jobs 2
	OMP_NUM_THREADS=1 $(PY) benchmarks/cifar_classes.py
	$(PY) benchmarks/cifar.py --report --readme docs/cifar.md > /dev/null

# The converged suite (the long recipe, 200 epochs: tens of CPU hours; resumable, run folders in ~/.cache/timm-icm).
# tcmalloc where installed (Debian: libtcmalloc-minimal4): the same arithmetic, a faster step (docs/cifar.md).
LONG_BLOCKS ?= L1 L2 L3
TCMALLOC ?= $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
cifar-long: data
	LD_PRELOAD=$(TCMALLOC) OMP_NUM_THREADS=1 $(PY) benchmarks/cifar.py --recipe long --blocks $(LONG_BLOCKS) --extras --seeds 3 --jobs 2
	OMP_NUM_THREADS=1 $(PY) benchmarks/cifar_classes.py
	$(PY) benchmarks/cifar.py --report --readme docs/cifar.md > /dev/null
	$(PY) benchmarks/tables.py README.md docs/cifar.md

# The capacity ladder (block C1: CIFAR-10 with 50 images per class, the long recipe on ResNet-20, WRN-16-4 and
# ResNet-34; about 45 CPU hours, most of them ResNet-34's).
cifar-ladder: data
	LD_PRELOAD=$(TCMALLOC) OMP_NUM_THREADS=1 $(PY) benchmarks/cifar.py --recipe long --blocks C1 --seeds 3 --jobs 2
	OMP_NUM_THREADS=1 $(PY) benchmarks/cifar_classes.py
	$(PY) benchmarks/cifar.py --report --readme docs/cifar.md > /dev/null

clean:
	rm -rf $(VENV) output *.egg-info
