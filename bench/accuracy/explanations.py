"""Why each configuration's number is what it is, whatever that number turns out to be: the fixed
half of every explanation in accuracy.md (the measured half is generated from the numbers)."""

from bench.accuracy.data import SYNTHETIC_MEAN, SYNTHETIC_STD

#: Why each configuration's number is what it is, whatever that number turns out to be.
EXPLANATIONS = {
    "ibp": "The correct head (impls' IBPHead) and the authors' two-stage recipe: the classifier "
    "alone on the frozen backbone (SGD lr 1.0), then everything (Adam, lr 1e-4, classifier 1e-2). "
    "The `synthetic` classes differ exactly in the second-order statistics this head computes.",
    "ibp_frozen": "The same head on the backbone frozen at its seeded random initialisation, "
    "classifier only (the recipe's first stage alone): the question's set-up with every bug fixed "
    "but the frozen backbone. Random 3x3 conv + ReLU features still carry the images' spatial and "
    "cross-channel correlations, so a frozen random backbone is a fair stand-in for the question's "
    "frozen VGG: this is what the question's set-up can reach once its head and learning rate are "
    "right.",
    "seed": "The question's set-up (`examples/seed_question_tf.py`, trained as "
    "`bench/accuracy/seed_model_*.py`). Bug 1 sums "
    "the outer products over the batch, so all 16 samples of a batch get the same feature vector: "
    "per batch the classifier can only give one answer, at best the batch's most frequent class "
    "(the batch-majority ceiling below), and SGD at lr 0.001 on unit-norm features barely moves "
    "its logits.",
    "seed_fix_batch_sum": "Per-sample pooling, the rest of the question kept. The classifier now "
    "sees per-sample features, but SGD at lr 0.001 on vectors of norm 1/4 (the batch-wide L2 "
    "divides by the norm of 16 samples) moves the logits by about lr * ||v||^2 per step.",
    "seed_fix_fourth_root": "A^(1/2) instead of A^(1/4); batch sum and lr 0.001 stay.",
    "seed_fix_eps_ones": "eps * I instead of eps * ones; batch sum and lr 0.001 stay.",
    "seed_fix_batch_l2": "Per-sample L2 instead of one norm for the batch; batch sum and lr 0.001 "
    "stay.",
    "seed_fix_low_lr": "The authors' classifier optimizer (SGD lr 1.0, momentum 0.9) instead of "
    "lr 0.001. The batch sum stays: with one feature vector per batch there is nothing per sample "
    "to learn, whatever the learning rate.",
    "seed_fix_frozen_backbone": "Everything trains (still SGD lr 0.001), so gradients now flow "
    "through the question's SVD root (bug 6) into the backbone. Where the seeded random backbone "
    "has two or more dead ReLU channels (zero for every sample of a batch; how many depends on the "
    "seed's initial weights), eps * ones makes their rows of the pooled matrix identical: it is "
    "exactly singular, with repeated singular values. torch's SVD gradient divides by differences "
    "of singular values, and equal ones make it NaN; TensorFlow's drops those terms, but its SVD "
    "(Eigen's BDCSVD) returns the repeated ones as exact zeros, where the question's root has an "
    "infinite derivative (sqrt'(0)). Either way the first step's gradient is NaN, and so are the "
    "backbone's weights; without such channels the run trains, at chance. The loop checks every "
    "step's gradient, so this depends on the seed, not on the machine. Checked by its loss alone, "
    "it did depend on the machine: TensorFlow's CPU graphs fuse each convolution with its bias "
    "and ReLU into one kernel that turns NaN into 0, so the NaN backbone gives constant, finite "
    "logits, and the same run looked at chance on one CPU and diverged on another. TensorFlow's "
    "log line 'Eigen::BDCSVD failed with error code 3' is a consequence: code 3 is Eigen's "
    "InvalidInput, an SVD handed NaN.",
    "seed_fix_batch_sum_and_low_lr": "Bugs 1 and 5 fixed together: per-sample pooling and the "
    "authors' classifier optimizer. The fourth root, eps * ones and the batch-wide L2 stay; the "
    "distance to `ibp_frozen` is what they cost.",
    "seed_pretrained": "The question's set-up on a frozen backbone that the correct model "
    "(`ibp`) trained on this data set first: a stand-in for the question's ImageNet VGG-16, whose "
    "features already separate classes. Still batch sum and SGD at lr 0.001: does a useful "
    "backbone let the question's head reach its 30 %?",
    "seed_pretrained_fix_low_lr": "`seed_pretrained` at the authors' classifier rate (SGD lr "
    "1.0, momentum 0.9). The batch sum stays, so the classifier still sees one vector per batch; "
    "but that vector is the root of a sum of covariances of features that separate the classes, "
    "so a fast classifier could learn to answer the batch's dominant class from it: the answers "
    "below show whether it does.",
    "first_order": "Global average pooling instead of bilinear pooling, same recipe as ibp. This "
    "is first-order in the backbone's features, not in the pixels: the mean of ReLU(w . x) grows "
    "with the variance w^T S w of the filter response, a second-order statistic of the image, so "
    "a ReLU network with average pooling can learn textures too. The pixels' own first-order "
    "statistics are the same for every `synthetic` image (each channel has mean "
    f"{SYNTHETIC_MEAN} and standard deviation {SYNTHETIC_STD}, tested), so a classifier on them "
    "is at chance by construction.",
    "bilinear_no_sqrtm": "The original B-CNN (bilinear pooling, signed sqrt, L2, no matrix square "
    "root), same recipe as ibp: what the matrix root adds.",
}
