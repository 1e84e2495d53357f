"""The founding question's TensorFlow layers (2019), in TF2 spellings: tf.svd is now
tf.linalg.svd, tf.diag tf.linalg.diag, tf.div tf.math.divide. Nothing else is changed, bugs
included (impls.testing.founding_question numbers them), so that ibp-check can show what it
finds:

    ibp-check pool examples/seed_question_tf.py:BILINEAR_POOLING
    ibp-check sqrtm examples/seed_question_tf.py:Sqrt_Root_SVD_Lyapunov

The names are the question's, so that its author recognises them.
"""

import tensorflow as tf

Batch_Size = 16


def BILINEAR_POOLING(Feature_Map):
    Height = Feature_Map.shape[1]
    Width = Feature_Map.shape[2]
    Channel = Feature_Map.shape[3]
    Epsilon = tf.scalar_mul(
        tf.keras.backend.epsilon(), tf.ones([Batch_Size, Channel, Channel], tf.float32)
    )
    A = tf.zeros([Batch_Size, Channel, Channel], tf.float32)
    for i in range(Height):
        for j in range(Width):
            A = A + tf.matmul(Feature_Map[:, i, j, :], Feature_Map[:, i, j, :], transpose_a=True)
    N = tf.cast((Height * Width), tf.float32)
    A = tf.add(tf.math.divide(A, N), Epsilon)
    return A


def Sqrt_Root_SVD_Lyapunov(A):
    BatchSize = A.shape[0]
    output_list = []
    for i in range(BatchSize):
        S, U, V = tf.linalg.svd(A[i, :, :], compute_uv=True)
        S = tf.where(tf.less(S, 1e-10), S, tf.sqrt(S))
        SQRT = tf.matmul(U, (tf.matmul(tf.linalg.diag(tf.sqrt(S)), V, transpose_b=True)))
        output_list.append(SQRT)
    sA = tf.stack(output_list)
    return sA


def SIGNED_SQRT(x):
    return tf.sign(x) * tf.sqrt(tf.abs(x))


def L2_NORMALIZE(x):
    return tf.math.l2_normalize(x, axis=None, epsilon=1e-12)
