"""The data layer: datasets (TFDS builders and tools) and the host input pipelines (tf.data).

Datasets:
* `synthetic_scenes`, `synthetic_videos`: the embedded datasets, rendered locally by
  `procedural` (scenes, clips); `folder_builders`: a folder of images or videos as a dataset.
* `fh_masks`: Felzenszwalb masks of any image dataset as a derived dataset (`segmentation` holds
  the FH call); `vito.curate` filters video datasets the same way.
* `build_tools`: what those share (worker pools, Beam, records kept encoded); `shards`: their
  unit of work; `loading`: finds (and builds) the dataset a config names; `tfds_compat`: a TFDS fix.

Input pipelines (entry points in `pipeline`: `make_pretrain_iterator`,
`make_video_pair_iterator`, `make_eval_iterator`):
* `config`: the `config.data` fields and their defaults (imports no TensorFlow);
* `sources`: this process's slice of a dataset; `examples`: per-example views and ids, with the
  crop geometry of `geometry`; `stream`: the seeded, resumable epoch stream and `StreamSpec`;
  `iterators`: numpy batch iterators and bad-record errors.
"""
