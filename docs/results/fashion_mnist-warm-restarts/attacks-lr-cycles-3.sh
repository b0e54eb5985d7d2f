#!/bin/bash
# The other attacks on a three-cycle vault: truncation, RTLL/RTAL (Adam, plain and informed), pruning, extraction.
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash attacks-lr-cycles-3.sh VAULT OUT_PREFIX
# Writes OUT_PREFIX-{truncate,finetune,prune,extract}.json (one op thread each, as measured; THREADS=N for more).
set -e
V=$1; O=$2
export TF_NUM_INTRAOP_THREADS=${THREADS:-1}
ipguard attack truncate --vault "$V" --json > "$O-truncate.json"
ipguard attack finetune --vault "$V" --variant RTLL,RTAL --optimizer adam --renormalize --json > "$O-finetune.json"
ipguard attack prune --vault "$V" --rates 0.5,0.7,0.8,0.9 --json > "$O-prune.json"
ipguard attack extract --vault "$V" --labels hard,soft --surrogate same --json > "$O-extract.json"
