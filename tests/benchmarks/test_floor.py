"""The floor's FLOP counts (benchmarks/floor.py): the formulas on layers whose FLOPs are known by
hand, read off a tiny Keras model, and VGG16's published count. No timing is asserted."""

from __future__ import annotations

from benchmarks.floor import (
    conv2d_flops,
    dense_flops,
    dense_training_flops,
    forward_flops,
    head_epoch_flops,
    layer_shapes,
    matmul_rate,
    model_flops,
)


def test_a_3x3_conv_on_8x8x3_to_4_channels_is_13824_flops() -> None:
    # 8*8 outputs x 4 channels, each 3*3*3 multiply-adds
    assert conv2d_flops(8, 8, 3, 4, 3, 3) == 8 * 8 * 4 * (3 * 3 * 3) * 2 == 13824
    assert dense_flops(10, 4) == 80


def test_flops_are_read_off_a_keras_models_conv_and_dense_layers() -> None:
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 8x8 out
    x = keras.layers.Conv2D(2, 3)(x)  # valid: 6x6 out
    x = keras.layers.MaxPooling2D()(x)  # 3x3x2, no FLOPs counted
    x = keras.layers.Flatten()(x)  # 18
    x = keras.layers.Dense(5)(x)
    outputs = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, outputs)
    assert layer_shapes(model) == [
        ("conv", (8, 8, 3, 4, 3, 3)), ("conv", (6, 6, 4, 2, 3, 3)),
        ("dense", (18, 5)), ("dense", (5, 3)),
    ]
    expected = 13824 + 2 * 6 * 6 * 4 * 2 * 9 + 2 * 18 * 5 + 2 * 5 * 3
    assert model_flops(model) == expected
    # nested models count once each
    outer_in = keras.Input((8, 8, 3))
    assert model_flops(keras.Model(outer_in, model(outer_in))) == expected


def test_a_heads_training_step_skips_the_gradient_of_its_frozen_input() -> None:
    head = [("dense", (512, 256)), ("dense", (256, 7))]
    forward = 2 * 512 * 256 + 2 * 256 * 7
    assert forward_flops(head) == forward
    # forward + weight gradients everywhere + the input gradient of the second layer only
    assert dense_training_flops(head) == 2 * forward + 2 * 256 * 7
    assert head_epoch_flops(head, n_train=100, n_val=10) == (
        100 * dense_training_flops(head) + 10 * forward)


def test_vgg16s_convolutions_at_224_px_are_its_published_15_3_gmacs() -> None:
    import keras

    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    macs = model_flops(vgg) / 2
    assert abs(macs - 15.35e9) / 15.35e9 < 0.005


def test_matmul_rate_counts_2n3_flops_per_matmul() -> None:
    assert matmul_rate([2.0, 1.0, 4.0], n=1000) == {
        "gflops_best": 2.0, "gflops_median": 1.0, "runs": 3}
