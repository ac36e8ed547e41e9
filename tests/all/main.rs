mod kf_files;
