"""mipflow's triggers (the triggerer runs them): the asset watcher of the nodes' data versions."""
