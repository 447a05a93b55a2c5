"""Images and datasets: standardizing one image, listing a folder of class sub-folders, the seeded split,
generated demo shapes. Imports only ``gearfeat._internal``."""
