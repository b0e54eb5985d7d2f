#!/bin/bash
# The other attacks on a three-cycle vault: truncation, RTLL/RTAL (Adam, plain and informed), pruning, extraction.
V=$1; O=$2
export TFDS_DATA_DIR=/work/shared/tensorflow_datasets TF_NUM_INTRAOP_THREADS=${THREADS:-1}
I=/work/main/.venv/bin/ipguard
cd /work/main
date
$I attack truncate --vault $V --json > $O-truncate.json 2> $O-truncate.err; date
$I attack finetune --vault $V --variant RTLL,RTAL --optimizer adam --renormalize --json > $O-finetune.json 2> $O-finetune.err; date
$I attack prune --vault $V --rates 0.5,0.7,0.8,0.9 --json > $O-prune.json 2> $O-prune.err; date
$I attack extract --vault $V --labels hard,soft --surrogate same --json > $O-extract.json 2> $O-extract.err; date
echo ALLDONE
