"""Model zoo: one module per family (resnet, preact_resnet, wide_resnet, pyramidnet, densenet, resnext,
simple_cnn) plus shared blocks in layers.py. Configs point at classes or factories by their full path
(conf/model/<name>.yaml), so there is deliberately no name -> class registry here."""
