"""Parameter and MAC figures of the official implementations (shared/reference/model_specs.md).

"code" figures, measured on the official PyTorch code: params counted with sum(p.numel()),
MACs = conv (+ transposed conv) + linear multiply-adds, at the stated resolution with the stated
classes. Every registered model must have an entry here: the tests fail for one that has none.
"""

M = 1_000_000
G = 1_000_000_000

# name: (num_classes, (H, W), params, macs)
FIGURES: dict[str, tuple[int, tuple[int, int], int, float]] = {
    # ESPNet v1, 20 classes at 1024x512 (§1): conv 4.505 G + deconv 0.275 G; ESPNet-C conv only
    "espnet_v1": (20, (512, 1024), 365_109, 4.505 * G + 0.275 * G),
    "espnet_v1_c": (20, (512, 1024), 349_449, 3.470 * G),
    # ESPNetv2 (§2): published conv MACs exclude the classifier Linear (head x 1000) -- added here
    "espnetv2_0_5": (1000, (224, 224), 1_241_332, 28.38 * M + 1024 * 1000),
    "espnetv2_1_0": (1000, (224, 224), 1_670_072, 85.72 * M + 1024 * 1000),
    "espnetv2_1_25": (1000, (224, 224), 1_965_440, 123.40 * M + 1024 * 1000),
    "espnetv2_1_5": (1000, (224, 224), 2_314_856, 168.60 * M + 1024 * 1000),
    "espnetv2_2_0": (1000, (224, 224), 3_498_136, 284.81 * M + 1280 * 1000),
    # FBNet v1 (§3): mobile-vision structure without the IR convs' biases
    "fbnet_a": (1000, (224, 224), 4_304_584, 244.45 * M),
    "fbnet_b": (1000, (224, 224), 4_801_368, 291.0 * M),
    "fbnet_c": (1000, (224, 224), 5_570_664, 378.1 * M),
    # FBNetV2 (§4)
    "fbnetv2_f1": (1000, (128, 128), 6_024_744, 56.23 * M),
    "fbnetv2_f2": (1000, (160, 160), 6_024_744, 85.16 * M),
    "fbnetv2_f3": (1000, (192, 192), 6_924_840, 121.42 * M),
    "fbnetv2_f4": (1000, (224, 224), 7_022_880, 237.61 * M),
    "fbnetv2_l1": (1000, (224, 224), 8_538_792, 325.03 * M),
    "fbnetv2_l2": (1000, (256, 256), 8_538_792, 422.61 * M),
    # FBNetV3 (§5), mobile-vision definitions with their padding overrides
    "fbnetv3_a": (1000, (224, 224), 8_598_480, 355.5 * M),
    "fbnetv3_b": (1000, (248, 248), 8_598_480, 460.2 * M),
    "fbnetv3_c": (1000, (248, 248), 9_973_816, 555.6 * M),
    "fbnetv3_d": (1000, (248, 248), 10_306_296, 642.6 * M),
    "fbnetv3_e": (1000, (264, 264), 10_772_896, 760.0 * M),
    "fbnetv3_f": (1000, (272, 272), 13_896_160, 1178.9 * M),
    "fbnetv3_g": (1000, (320, 320), 16_623_920, 2125.2 * M),
    # EfficientNet v1 (§6)
    "efficientnet_b0": (1000, (224, 224), 5_288_548, 0.386 * G),
    "efficientnet_b1": (1000, (240, 240), 7_794_184, 0.687 * G),
    "efficientnet_b2": (1000, (260, 260), 9_109_994, 0.994 * G),
    "efficientnet_b3": (1000, (300, 300), 12_233_232, 1.827 * G),
    "efficientnet_b4": (1000, (380, 380), 19_341_616, 4.394 * G),
    "efficientnet_b5": (1000, (456, 456), 30_389_784, 10.266 * G),
    "efficientnet_b6": (1000, (528, 528), 43_040_704, 19.068 * G),
    "efficientnet_b7": (1000, (600, 600), 66_347_960, 37.746 * G),
    # EfficientNetV2 (§7) at the evaluation resolution
    "efficientnetv2_s": (1000, (384, 384), 21_458_488, 8.366 * G),
    "efficientnetv2_m": (1000, (480, 480), 54_139_356, 24.582 * G),
    "efficientnetv2_l": (1000, (480, 480), 118_515_272, 56.080 * G),
    # GhostNet v1 (§8) and v2 (§9)
    "ghostnet_0_5": (1000, (224, 224), 2_587_292, 42.33 * M),
    "ghostnet_1_0": (1000, (224, 224), 5_182_508, 141.15 * M),
    "ghostnet_1_3": (1000, (224, 224), 7_358_820, 227.00 * M),
    "ghostnetv2_1_0": (1000, (224, 224), 6_156_908, 167.05 * M),
    "ghostnetv2_1_3": (1000, (224, 224), 8_960_404, 269.32 * M),
    "ghostnetv2_1_6": (1000, (224, 224), 12_392_698, 398.61 * M),
}

PARAMS_TOL = 0.005  # params within 0.5 %
MACS_TOL = 0.02  # MACs within 2 %
